"""Romanization of Chinese, Korean and Japanese lyric lines, as the lyric vocabulary expects them.

Chinese: pinyin with tone numbers, neutral tone written 5, syllables joined without spaces
("我们的" -> "wo3men5de5"), by ``pypinyin`` (Style.TONE3, first reading of each character).
Characters pypinyin has no reading for (Latin letters, digits, punctuation) pass through.

Korean: the Yale-like "academic" transliteration that ACE-Step's tokenizer uses (the
``hangul-romanize`` package's ``academic`` rule), written here from scratch: every Hangul syllable
is decomposed arithmetically (U+AC00 + (initial*21 + vowel)*28 + final) and spelt letter by letter
from the Revised Romanization tables, without any sound-change rules ("좋아해요" ->
"joh-ahae-yo"). A hyphen goes before a syllable that follows another syllable when it starts with
the silent initial ㅇ, or when the previous final plus this initial could be read in two ways
(e.g. "g"+"g" vs "gg"). Everything that is not a precomposed Hangul syllable passes through.

Japanese: ACE-Step uses ``cutlet`` (MeCab + UniDic word segmentation, Hepburn, loanwords in their
English spelling). We use ``pykakasi`` instead (pure Python, no dictionary download), for kana AND
kanji, formatted like cutlet's output where that is cheap: words separated by spaces, punctuation
attached to the word before it, the particles は/へ/を written "wa"/"e"/"wo". Readings and word
boundaries still differ from cutlet's on most lines (pykakasi segments by its own dictionary and
does not know loanword spellings: "コンピューター" -> "konpyuutaa" where cutlet writes "computer").
"""
from __future__ import annotations

import itertools
import re
import unicodedata
from functools import lru_cache

# ---------------------------------------------------------------------------------------------
# Chinese
# ---------------------------------------------------------------------------------------------


def chinese_to_pinyin(text: str) -> str:
    """"我爱你" -> "wo3ai4ni3"; non-Chinese parts unchanged."""
    import pypinyin

    readings = pypinyin.pinyin(text, style=pypinyin.Style.TONE3, heteronym=False,
                               neutral_tone_with_five=True)
    return "".join(choices[0] for choices in readings)


# ---------------------------------------------------------------------------------------------
# Korean
# ---------------------------------------------------------------------------------------------
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
VOWELS_PER_INITIAL, FINALS_PER_VOWEL = 21, 28
# Revised Romanization letters of the 19 initials, 21 vowels and 28 finals (index 0: none).
INITIALS = ("g", "kk", "n", "d", "tt", "l", "m", "b", "pp", "s", "ss", "", "j", "jj", "ch", "k", "t", "p", "h")
VOWELS = ("a", "ae", "ya", "yae", "eo", "e", "yeo", "ye", "o", "wa", "wae", "oe", "yo", "u", "wo", "we",
          "wi", "yu", "eu", "ui", "i")
FINALS = ("", "g", "kk", "gs", "n", "nj", "nh", "d", "l", "lg", "lm", "lb", "ls", "lt", "lp", "lh", "m",
          "b", "bs", "s", "ss", "ng", "j", "ch", "k", "t", "p", "h")
SILENT_INITIAL = INITIALS.index("")  # ㅇ at the start of a syllable


def _two_way_joins() -> frozenset[str]:
    """Letter strings final + initial that also split into another valid (final, initial) pair,
    e.g. "g" + "g" = "gg" = "" + "gg" (ㄱ+ㄱ vs ㄲ): a hyphen keeps them apart."""
    ambiguous = set()
    for final, initial in itertools.product(FINALS, INITIALS):
        joined = final + initial
        splits = sum(1 for i in range(len(joined)) if joined[:i] in FINALS and joined[i:] in INITIALS)
        if splits > 1:
            ambiguous.add(joined)
    return frozenset(ambiguous)


AMBIGUOUS_JOINS = _two_way_joins()


def _jamo(ch: str) -> tuple[int, int, int] | None:
    """(initial, vowel, final) indices of a precomposed Hangul syllable, else None."""
    code = ord(ch) - HANGUL_FIRST
    if not 0 <= code <= HANGUL_LAST - HANGUL_FIRST:
        return None
    return code // (VOWELS_PER_INITIAL * FINALS_PER_VOWEL), (code // FINALS_PER_VOWEL) % VOWELS_PER_INITIAL, \
        code % FINALS_PER_VOWEL


def romanize_korean(text: str) -> str:
    """"사랑해요" -> "salanghae-yo"; "좋아" -> "joh-a"; other characters unchanged."""
    out = []
    previous = None  # jamo of the previous character when it was a syllable
    for ch in text:
        syllable = _jamo(ch)
        if syllable is None:
            out.append(ch)
        else:
            initial, vowel, final = syllable
            if previous is not None and (initial == SILENT_INITIAL
                                         or FINALS[previous[2]] + INITIALS[initial] in AMBIGUOUS_JOINS):
                out.append("-")
            out.append(INITIALS[initial] + VOWELS[vowel] + FINALS[final])
        previous = syllable
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Japanese
# ---------------------------------------------------------------------------------------------
_PARTICLES = {"は": "wa", "へ": "e", "を": "wo"}
# Hiragana words that stand alone after a kanji word (particles, copula); any other hiragana
# segment right after kanji is read as its inflection (okurigana) and joined to it.
_STANDALONE_KANA = set("はがをにでともへやかよねな") | {"の", "から", "まで", "より", "だけ", "です", "だ"}
_OPENING = ("(", "[", "「", "『", "“", "‘")
# Particles that pykakasi leaves at the end of a kanji word, with its reading of them.
_TRAILING_PARTICLES = {"に": "ni", "の": "no", "を": "wo", "は": "ha", "が": "ga", "で": "de", "と": "to",
                       "も": "mo", "へ": "he"}
# いる/いた after a て-form: cutlet writes them as words of their own ("mite ita").
_AUXILIARIES = {"いました": "imashita", "います": "imasu", "いない": "inai", "いる": "iru", "いた": "ita"}


@lru_cache(maxsize=1)
def _kakasi():
    import pykakasi

    return pykakasi.kakasi()


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c)[0] in "PS" for c in text)


def _has_kanji(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" or c == "々" for c in text)


def _is_hiragana(text: str) -> bool:
    return bool(text) and all("\u3041" <= c <= "\u309f" for c in text)


def _fullwidth_to_ascii(text: str) -> str:
    """"？" -> "?", "！" -> "!", "１" -> "1" (U+FF01..U+FF5E), as cutlet writes them."""
    return "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else c for c in text)


def _split_particle(source: str, roman: str) -> tuple[str, str]:
    """一緒に/"isshoni" -> ("issho", "ni"): pykakasi keeps a particle inside a kanji word, cutlet
    writes it as a word of its own."""
    last = source[-1]
    reading = _TRAILING_PARTICLES.get(last)
    if len(source) > 1 and reading and _has_kanji(source[:-1]) and len(roman) > len(reading) \
            and roman.endswith(reading):
        return roman[:-len(reading)], _PARTICLES.get(last, reading)
    return roman, ""


def _double_consonant(roman: str) -> str:
    """The romaji after a small tsu: 待っ|て -> "te" becomes "tte" ("ch" -> "tch")."""
    if roman[:1].isalpha() and roman[0] not in "aeiou":
        return ("t" if roman.startswith("ch") else roman[0]) + roman
    return roman


def _split_auxiliary(source: str, roman: str, previous: str) -> tuple[str, str] | None:
    """見て|いた or 歌っ|ている: (what joins the verb, the auxiliary's own word), else None."""
    for kana, reading in _AUXILIARIES.items():
        if source.endswith(kana) and roman.endswith(reading):
            head = source[:-len(kana)]
            if head in ("て", "で") or (not head and previous.endswith(("て", "で"))):
                return roman[:-len(reading)], reading
    return None


def romanize_japanese(text: str) -> str:
    """Hepburn romaji of kana and kanji by pykakasi, words separated by spaces (see the module
    docstring for how this differs from the original's cutlet)."""
    words: list[str] = []
    glue = None       # "bracket" after an opening bracket, "sokuon" after a segment-final small tsu
    previous = ""     # the previous segment's source text
    for item in _kakasi().convert(_fullwidth_to_ascii(text)):
        source, roman = item["orig"], item["hepburn"].strip()
        if not source.strip():  # the input's own spaces: word boundaries
            glue, previous = None, ""
            continue
        roman, particle = _split_particle(source, _PARTICLES.get(source, roman))
        if not roman:
            continue
        if glue == "sokuon":
            roman = _double_consonant(roman)
        okurigana = _has_kanji(previous) and _is_hiragana(source) and source not in _STANDALONE_KANA
        if words and _is_punctuation(roman) and not roman.startswith(_OPENING):
            words[-1] += roman  # "desu" + "." -> "desu."
        elif words and (glue or okurigana):
            auxiliary = _split_auxiliary(source, roman, previous)
            if auxiliary:
                words[-1] += auxiliary[0]  # "mite" + "ita"
                words.append(auxiliary[1])
            else:
                words[-1] += roman  # 行き|ます -> "ikimasu"
        else:
            words.append(roman)
        if particle:
            words.append(particle)
        glue = "bracket" if roman.endswith(_OPENING) else None
        if source.endswith(("っ", "ッ")) and words[-1].endswith("tsu"):
            # pykakasi reads a small tsu ending its segment as "tsu"; it doubles the next consonant
            words[-1] = words[-1][:-3]
            glue = "sokuon"
        previous = source
    return re.sub(r"\s+", " ", " ".join(w for w in words if w)).strip()


__all__ = ["chinese_to_pinyin", "romanize_korean", "romanize_japanese", "AMBIGUOUS_JOINS"]

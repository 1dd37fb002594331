"""Lyrics -> token ids for ACE-Step's lyric encoder.

The sequence follows the original pipeline (ACE-Step ``tokenize_lyrics``):

    [START]=261, then for every line of ``lyrics.split("\\n")``:
        empty line (after strip)        -> [SPACE]=2
        otherwise                       -> BPE("[<lang>]" + cleaned line, spaces -> "[SPACE]") + [2]

  * ``<lang>`` is the line's language: an explicit ``[xx]`` tag at the start of the line (one of
    the 17 supported codes, case-insensitive, removed from the line), else the pluggable
    ``detect_language(line)`` (for now always "en"; the original detects it per line). The tag is
    ComfyUI's convention: the original has none and would read "[fr]..." as a structure line.
  * A line that starts with ``[...]`` (after removing a language tag) is a structure line and is
    cleaned and prefixed as English: ``[Verse]`` -> ``[en][verse]`` -> ids 259, 6683. The twelve
    structure tags are single ids only when the brackets hold nothing but the tag name
    (``[Verse 1]`` becomes ``[verse one]`` and is split by BPE, as in the original).
  * Chinese uses the prefix token ``[zh-cn]``.
  * Empty lyrics give ids [0] with mask [0] (the original's "no lyrics" input).

Cleaning (``normalize(text, lang)``, pluggable): English follows the original's
``multilingual_cleaners(text, "en")``: drop '"', lowercase, spell numbers (currency, decimals,
ordinals, integers, with words identical to num2words 0.5.14, which the original uses: "one
hundred and twenty-three", "twenty-first", "twelve point five", "five dollars"), expand
abbreviations ("mr." -> "mister") and symbols ("&" -> "and"), collapse whitespace. Other
languages currently get only the language-independent part (drop '"', lowercase, collapse
whitespace); their own number words, pinyin, romanisation and automatic detection come later.

Parentheses are ordinary text here. (ComfyUI passes lyrics through its prompt-weight parser,
which removes them: "(ooh)" reaches its tokenizer as "ooh".)
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable

# ---------------------------------------------------------------------------------------------
# Special ids of the lyric vocabulary
# ---------------------------------------------------------------------------------------------
NULL_ID = 0        # [STOP]: the "no lyrics" id
UNK_ID = 1         # [UNK]
SPACE_ID = 2       # [SPACE]: spaces inside a line, and the end of every line
START_ID = 261     # [START]: first id of every sequence

# Language code -> id of its prefix token (identical in the original and in ComfyUI).
SUPPORTED_LANGUAGES: dict[str, int] = {
    "en": 259, "de": 260, "fr": 262, "es": 284, "it": 285, "pt": 286, "pl": 294, "tr": 295,
    "ru": 267, "cs": 293, "nl": 297, "ar": 5022, "zh": 5023, "ja": 5412, "hu": 5753,
    "ko": 6152, "hi": 6680,
}
STRUCTURE_TAGS: dict[str, int] = {
    "[start]": 6681, "[intro]": 6682, "[verse]": 6683, "[chorus]": 6684, "[bridge]": 6685,
    "[outro]": 6686, "[end]": 6687, "[inst]": 6688, "[solo]": 6689, "[hook]": 6690,
    "[pre-chorus]": 6691, "[break]": 6692,
}

_STRUCTURE_LINE = re.compile(r"\[.*?\]")  # used with .match: the line starts with a [...] group


def language_token(lang: str) -> str:
    """The vocabulary token that prefixes a line of language ``lang``."""
    return "[zh-cn]" if lang == "zh" else f"[{lang}]"


def canonical_language(code: str | None) -> str:
    """A detector's code -> one of SUPPORTED_LANGUAGES; anything unsupported reads as English
    (the original's rule)."""
    code = (code or "").lower()
    return code if code in SUPPORTED_LANGUAGES else "en"


# ---------------------------------------------------------------------------------------------
# English number words (num2words 0.5.14 wording, which the original cleaners call)
# ---------------------------------------------------------------------------------------------
_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = {20: "twenty", 30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy",
         80: "eighty", 90: "ninety"}
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "four": "fourth", "five": "fifth",
                  "six": "sixth", "seven": "seventh", "eight": "eighth", "nine": "ninth", "ten": "tenth",
                  "eleven": "eleventh", "twelve": "twelfth"}


def _illion_names() -> list[tuple[int, str]]:
    """(10**power, name) from "million" (10**6) up to "centillion" (10**303), short scale, with
    num2words' Latin stems: ..., decillion, undecillion, ..., novemnonagintillion, centillion."""
    small = ["m", "b", "tr", "quadr", "quint", "sext", "sept", "oct", "non"]
    units = ["", "un", "duo", "tre", "quattuor", "quin", "sex", "sept", "octo", "novem"]
    tens = ["dec", "vigint", "trigint", "quadragint", "quinquagint", "sexagint", "septuagint",
            "octogint", "nonagint"]
    stems = small + [unit + ten for ten in tens for unit in units] + ["cent"]
    return [(10 ** (3 * i + 6), stem + "illion") for i, stem in enumerate(stems)]


# Every scale word, largest first: the illions, then thousand and hundred.
_SCALES = sorted(_illion_names(), reverse=True) + [(1000, "thousand"), (100, "hundred")]
NUMBER_LIMIT = 1000 * _SCALES[0][0]  # num2words refuses numbers from 10**306 on


def spell_cardinal(n: int) -> str:
    """121 -> "one hundred and twenty-one"; 1234 -> "one thousand, two hundred and thirty-four"."""
    if n < 0:
        return "minus " + spell_cardinal(-n)
    if n >= NUMBER_LIMIT:
        raise OverflowError(f"{n} is too large to spell (limit 10**306)")
    if n < 20:
        return _SMALL[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[10 * tens] + (f"-{_SMALL[ones]}" if ones else "")
    scale, name = next((s, w) for s, w in _SCALES if s <= n)
    count, rest = divmod(n, scale)
    head = f"{spell_cardinal(count)} {name}"
    if rest == 0:
        return head
    # num2words joins a remainder below 100 with "and", a larger one with a comma.
    return f"{head} and {spell_cardinal(rest)}" if rest < 100 else f"{head}, {spell_cardinal(rest)}"


def spell_ordinal(n: int) -> str:
    """21 -> "twenty-first", 100 -> "one hundredth", 40 -> "fortieth"."""
    words = spell_cardinal(n).split(" ")
    parts = words[-1].split("-")
    last = parts[-1]
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    else:
        last = (last[:-1] + "ie" if last.endswith("y") else last) + "th"
    parts[-1] = last
    words[-1] = "-".join(parts)
    return " ".join(words)


def spell_float(value: float) -> str:
    """num2words' reading of a float: whole part, "point", then each decimal digit of the float's
    shortest repr ("12.5" -> "twelve point five", "12.50" -> the same, "12.0" -> "twelve")."""
    if value == int(value):  # int() raises OverflowError for inf, as num2words does
        return spell_cardinal(int(value))
    whole = int(value)
    places = abs(Decimal(repr(value)).as_tuple().exponent)
    # The digits come from float arithmetic (as in num2words), snapped to the nearest integer
    # when within 0.01 of it, floored otherwise.
    fraction = abs(value - whole) * 10 ** places
    digits = round(fraction) if abs(round(fraction) - fraction) < 0.01 else math.floor(fraction)
    digits = str(int(digits)).rjust(places, "0")
    return " ".join([spell_cardinal(whole), "point"] + [_SMALL[int(d)] for d in digits[:places]])


# Currency names (singular, plural) of the units and the cents, as num2words' English tables.
_CURRENCY_NAMES = {
    "GBP": (("pound sterling", "pounds sterling"), ("penny", "pence")),
    "USD": (("dollar", "dollars"), ("cent", "cents")),
    "EUR": (("euro", "euro"), ("cent", "cents")),
}


def spell_money(amount: float, currency: str) -> str:
    """"$20" -> "twenty dollars"; "$20.15" -> "twenty dollars, fifteen cents" (the original drops
    the ", zero cents" part of whole amounts)."""
    (unit, units), (cent, cents) = _CURRENCY_NAMES[currency]
    rounded = Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    whole, fraction = divmod(rounded, 1)
    whole, hundredths = int(whole), int(fraction * 100)
    text = (f"{spell_cardinal(whole)} {unit if whole == 1 else units}, "
            f"{spell_cardinal(hundredths)} {cent if hundredths == 1 else cents}")
    if amount.is_integer():
        text = text[: text.rfind(", ")]
    return text


# Patterns of the original's English number expansion, applied in this order.
_GROUPED_NUMBER = re.compile(r"\b\d{1,3}(,\d{3})*(\.\d+)?\b")  # 1,000,000.5: drop the commas
_CURRENCIES = (  # symbol before or after the amount
    ("GBP", re.compile(r"((£[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+£))")),
    ("USD", re.compile(r"((\$[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+\$))")),
    ("EUR", re.compile(r"(([0-9\.\,]*[0-9]+€)|((€[0-9\.\,]*[0-9]+)))")),
)
_DECIMAL = re.compile(r"([0-9]+[.,][0-9]+)")
_ORDINAL = re.compile(r"([0-9]+)(st|nd|rd|th)")
_INTEGER = re.compile(r"[0-9]+")


def _money_match(match: re.Match, currency: str) -> str:
    amount = float(re.sub(r"[^\d.]", "", match.group(0).replace(",", ".")))  # may raise ValueError
    return spell_money(amount, currency)


def expand_english_numbers(text: str) -> str:
    """Spell out every number of an (already lowercased) English line. Raises ValueError or
    ArithmeticError where num2words would (the caller then keeps the line unexpanded)."""
    text = _GROUPED_NUMBER.sub(lambda m: m.group(0).replace(",", ""), text)
    try:
        # One failing currency (an amount like "$1.2.3") stops the later ones, as in the original.
        for currency, pattern in _CURRENCIES:
            text = pattern.sub(lambda m, c=currency: _money_match(m, c), text)
    except (ValueError, ArithmeticError):
        pass
    text = _DECIMAL.sub(lambda m: spell_float(float(m.group(1).replace(",", "."))), text)
    text = _ORDINAL.sub(lambda m: spell_ordinal(int(m.group(1))), text)
    return _INTEGER.sub(lambda m: spell_cardinal(int(m.group(0))), text)


# ---------------------------------------------------------------------------------------------
# English cleaners
# ---------------------------------------------------------------------------------------------
_ABBREVIATIONS = [  # order matters only where one is a prefix of another ("mrs" before "mr")
    (re.compile(rf"\b{short}\.", re.IGNORECASE), long)
    for short, long in [
        ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
        ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
        ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
        ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"),
    ]
]
_SYMBOLS = [("&", " and "), ("@", " at "), ("%", " percent "), ("#", " hash "), ("$", " dollar "),
            ("£", " pound "), ("°", " degree ")]
_WHITESPACE = re.compile(r"\s+")


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text)


def clean_english(text: str) -> str:
    """The original's ``multilingual_cleaners(text, "en")``."""
    text = text.replace('"', "").lower()
    try:
        text = expand_english_numbers(text)
    except (ValueError, ArithmeticError):
        pass  # e.g. a number of 306+ digits: the original leaves the whole line's numbers as digits
    for pattern, words in _ABBREVIATIONS:
        text = pattern.sub(words, text)
    for symbol, words in _SYMBOLS:
        text = text.replace(symbol, words)
    return collapse_whitespace(text.strip())


def clean_basic(text: str, lang: str) -> str:
    """The language-independent part of the original's cleaners (interim for non-English)."""
    text = text.replace('"', "")
    if lang == "tr":  # Python's lower() would give "i̇" (i + combining dot) for "İ"
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    return collapse_whitespace(text.lower().strip())


def default_normalize(text: str, lang: str) -> str:
    return clean_english(text) if lang == "en" else clean_basic(text, lang)


def default_detect_language(line: str) -> str:
    """Placeholder detector: every line without an explicit tag is English for now."""
    return "en"


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LyricLine:
    """How one input line was tokenized (for previews and debugging)."""

    source: str                 # the line as written, stripped
    language: str | None        # language whose cleaning and prefix token were used (None: empty)
    text: str                   # the cleaned text given to BPE, without prefix, spaces as spaces
    ids: tuple[int, ...]        # this line's ids, without the line-end id 2
    structure: bool = False     # a "[...]" line (cleaned as English)
    explicit_language: bool = False  # the line began with a "[xx]" language tag


LanguageDetector = Callable[[str], str]
Normalizer = Callable[[str, str], str]


def split_language_tag(line: str) -> tuple[str | None, str]:
    """"[fr]bonjour" -> ("fr", "bonjour"); a line without a supported 2-letter tag -> (None, line)."""
    if len(line) >= 4 and line[0] == "[" and line[3] == "]":
        code = line[1:3].lower()
        if code in SUPPORTED_LANGUAGES:
            # Strip the rest: a line never starts with a space after its language token in the
            # original's data (ComfyUI keeps one here for non-English languages).
            return code, line[4:].strip()
    return None, line


class LyricTokenizer:
    """ACE-Step lyric tokenizer over the BPE vocabulary ``vocab.json`` (see ``find_lyric_vocab``).

    ``detect_language(line) -> code`` and ``normalize(text, lang) -> text`` are the pluggable
    steps; the defaults are "English" and the English/basic cleaners."""

    def __init__(self, vocab_path, detect_language: LanguageDetector | None = None,
                 normalize: Normalizer | None = None):
        from tokenizers import Tokenizer

        self.vocab_path = os.fspath(vocab_path)
        try:
            self.bpe = Tokenizer.from_file(self.vocab_path)
        except Exception as err:  # tokenizers raises a bare Exception for unreadable files
            raise ValueError(f"{self.vocab_path}: cannot read the lyric vocabulary ({err}). Use vocab.json "
                             "from ComfyUI (comfy/text_encoders/ace_lyrics_tokenizer) or ACE-Step "
                             "(acestep/models/lyrics_utils).") from err
        expected = {"[STOP]": NULL_ID, "[SPACE]": SPACE_ID, "[START]": START_ID,
                    **{language_token(c): i for c, i in SUPPORTED_LANGUAGES.items()}, **STRUCTURE_TAGS}
        wrong = [t for t, i in expected.items() if self.bpe.token_to_id(t) != i]
        if wrong:
            raise ValueError(f"{self.vocab_path} is not ACE-Step's lyric vocabulary (tokens {wrong[:4]} "
                             "are missing or have other ids). Use vocab.json from ComfyUI "
                             "(comfy/text_encoders/ace_lyrics_tokenizer) or ACE-Step (acestep/models/lyrics_utils).")
        self.detect_language = detect_language or default_detect_language
        self.normalize = normalize or default_normalize

    def encode_text(self, text: str, lang: str) -> list[int]:
        """BPE ids of already-cleaned text with its language prefix (no line-end id)."""
        marked = (language_token(lang) + text).replace(" ", "[SPACE]")
        return self.bpe.encode(marked).ids

    def tokenize_line(self, raw_line: str) -> LyricLine:
        line = raw_line.strip()
        if not line:
            return LyricLine(source="", language=None, text="", ids=())
        tagged, body = split_language_tag(line)
        lang = tagged if tagged is not None else canonical_language(self.detect_language(line))
        structure = bool(_STRUCTURE_LINE.match(body))
        if structure:
            lang = "en"  # "[Verse]", "[Chorus 2]": English cleaning and prefix, as the original
        text = self.normalize(body, lang)
        return LyricLine(source=line, language=lang, text=text, ids=tuple(self.encode_text(text, lang)),
                         structure=structure, explicit_language=tagged is not None)

    def tokenize_lines(self, lyrics: str) -> list[LyricLine]:
        return [self.tokenize_line(raw) for raw in lyrics.split("\n")]

    def encode(self, lyrics: str) -> list[int]:
        """Lyric ids: [261], then each line's ids followed by 2; "" -> [0]."""
        return self.encode_with_mask(lyrics)[0]

    def encode_with_mask(self, lyrics: str) -> tuple[list[int], list[int]]:
        """(ids, mask). Empty lyrics give ([0], [0]): one masked "no lyrics" token, as the original."""
        if len(lyrics) == 0:
            return [NULL_ID], [0]
        ids = [START_ID]
        for line in self.tokenize_lines(lyrics):
            ids += list(line.ids) + [SPACE_ID]
        return ids, [1] * len(ids)

    def decode(self, ids) -> str:
        """Readable text of ids, as the original decodes them ([SPACE] -> " ", [STOP] dropped)."""
        text = self.bpe.decode([int(i) for i in ids], skip_special_tokens=False)
        return text.replace(" ", "").replace("[SPACE]", " ").replace("[STOP]", "")


__all__ = [
    "LyricTokenizer", "LyricLine", "SUPPORTED_LANGUAGES", "STRUCTURE_TAGS", "START_ID", "SPACE_ID",
    "NULL_ID", "UNK_ID", "clean_english", "clean_basic", "default_normalize", "default_detect_language",
    "canonical_language", "split_language_tag", "language_token", "spell_cardinal", "spell_ordinal",
    "spell_float", "spell_money", "expand_english_numbers",
]

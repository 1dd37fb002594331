"""Lyrics -> token ids for ACE-Step's lyric encoder, as the original app tokenizes them.

The sequence follows the original pipeline (ACE-Step ``tokenize_lyrics``):

    [START]=261, then for every line of ``lyrics.split("\\n")``, stripped:
        empty line                      -> [SPACE]=2
        otherwise                       -> BPE("[<lang>]" + normalised line, spaces -> "[SPACE]") + [2]

  * ``<lang>`` is the line's language, detected per line exactly as the original does it
    (language.py: LangSegment's segmentation over the py3langid 0.3.0 model, most characters wins,
    English gives way to any other language found), then mapped to the 17 languages with a
    prefix token (anything else -> English).
  * An explicit ``[xx]`` tag at the start of a line (one of the 17 codes, any case) overrides
    detection and is removed from the line. This is ComfyUI's convention, not the original's
    (which would read "[fr]..." as a structure line, in English).
  * A line that starts with ``[...]`` (after removing a language tag) is a structure line and is
    cleaned and prefixed as English: ``[Verse]`` -> ``[en][verse]`` -> ids 259, 6683. The twelve
    structure tags are single ids only when the brackets hold nothing but the tag name
    (``[Verse 1]`` becomes ``[verse one]`` and is split by BPE, as in the original).
  * Chinese uses the prefix token ``[zh-cn]``.
  * Empty lyrics give ids [0] with mask [0] (the original's "no lyrics" input).

Normalisation (normalize.py, ``normalize_line``): per-language number words, abbreviations and
symbols, lowercase, collapsed whitespace; Chinese to tone-numbered pinyin, Korean romanized,
Japanese romaji (pykakasi here: the one deliberate difference from the original, which uses
cutlet), Hindi only lowercased.

Where this differs from the original on purpose:
  * Japanese romaji come from pykakasi, not cutlet (see romanize.py);
  * ``[xx]`` language tags (above);
  * a line whose normalisation raises is kept with the basic cleaner (lowercase, whitespace) and
    a note, where the original prints an error and drops the line.
Parentheses are ordinary text here. (ComfyUI passes lyrics through its prompt-weight parser,
which removes them: "(ooh)" reaches its tokenizer as "ooh".)

For previews (``LyricTokenizer.preview``): per line the language, whether it was detected, the
text the model reads and its token count, the total against the lyric length the model was
trained with (``LYRIC_TOKEN_LIMIT``) and how many tokens lie beyond it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from .language import detect_language as detect_line_language
from .language import detection_warning
from .normalize import (clean_basic, clean_english, collapse_whitespace, expand_english_numbers,
                        normalize_line, number_words_warning, spell_cardinal, spell_float, spell_money,
                        spell_ordinal)


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
# Tags that are one vocabulary id each (structure tags, language prefixes, [SPACE] ...).
_ADDED_TOKEN = re.compile("|".join(re.escape(t) for t in [*STRUCTURE_TAGS, *(
    "[zh-cn]" if c == "zh" else f"[{c}]" for c in SUPPORTED_LANGUAGES), "[SPACE]", "[UNK]", "[STOP]", "[START]"]))


# Lines longer than this are processed in pieces (see LyricTokenizer._tokenize_line). Some of the
# original's regular expressions take quadratic time on long runs of digits or letters (a
# 20,000-digit line would take minutes); no sung line comes near this length.
LONG_LINE_CHARS = 500

# The original's training data loader keeps at most this many lyric ids per song
# (text2music_dataset.py: ``lyric_token_idx[:4096]``); inference itself does not cut.
LYRIC_TOKEN_LIMIT = 4096


def language_token(lang: str) -> str:
    """The vocabulary token that prefixes a line of language ``lang``."""
    return "[zh-cn]" if lang == "zh" else f"[{lang}]"


def canonical_language(code: str | None) -> str:
    """A detector's code -> one of SUPPORTED_LANGUAGES; anything unsupported reads as English
    (the original's rule)."""
    code = (code or "").lower()
    return code if code in SUPPORTED_LANGUAGES else "en"


def default_normalize(text: str, lang: str) -> str:
    return normalize_line(text, lang)


def default_detect_language(line: str) -> str:
    """The original's per-line language choice (a langid code; see language.py)."""
    return detect_line_language(line)


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
    detected: str | None = None  # the detector's own code (e.g. "gl" before it became "en")
    note: str = ""              # anything the user should know about this line

    @property
    def token_count(self) -> int:
        """Ids this line adds to the sequence, its line-end id included."""
        return len(self.ids) + 1

    @property
    def unknown_count(self) -> int:
        """How many of its ids are [UNK] (characters the vocabulary cannot spell)."""
        return sum(1 for i in self.ids if i == UNK_ID)

    @property
    def leading_tag(self) -> str | None:
        """The "[...]" group a structure line starts with, as written (None for other lines)."""
        if not self.structure:
            return None
        body = split_language_tag(self.source)[1]
        match = _STRUCTURE_LINE.match(body)
        return match.group(0) if match else None

    @property
    def unknown_tag(self) -> str | None:
        """The line's leading "[...]" tag when the model does not know it as a tag: not one of the
        twelve structure tags (``[badtag]``, ``[Verse 1]``), or a two-letter "[xx]" that is no
        supported language (``[zz]``). Such a line is read as ordinary English text."""
        tag = self.leading_tag
        if tag is None or tag.lower() in STRUCTURE_TAGS:
            return None
        return tag


@dataclass
class LyricsPreview:
    """What the model will read, line by line, and how it fits the trained lyric length."""

    lines: list[LyricLine]
    total_tokens: int           # length of the id sequence (start id and line ends included)
    limit: int                  # LYRIC_TOKEN_LIMIT unless asked otherwise
    cut_tokens: int             # ids beyond the limit (0 when it fits)
    first_cut_line: int | None  # index into ``lines`` of the first line reaching past the limit
    warnings: list[str] = field(default_factory=list)

    @property
    def over_limit(self) -> bool:
        return self.cut_tokens > 0

    def format(self) -> str:
        """A plain-text table for display: number, language, tokens, text read."""
        rows = [f"{'#':>3}  {'lang':<5} {'tokens':>6}  text the model reads"]
        running = 1  # the start id
        for number, line in enumerate(self.lines, 1):
            running += line.token_count
            if line.language is None:
                rows.append(f"{number:>3}  {'':<5} {line.token_count:>6}  (empty line)")
                continue
            lang = line.language + ("*" if line.explicit_language else "")
            mark = "  [beyond the limit]" if running > self.limit and self.over_limit else ""
            note = f"  ({line.note})" if line.note else ""
            rows.append(f"{number:>3}  {lang:<5} {line.token_count:>6}  {line.text}{note}{mark}")
        rows.append(f"total {self.total_tokens} tokens of {self.limit}")
        return "\n".join(rows + [f"warning: {w}" for w in self.warnings])


LanguageDetector = Callable[[str], str]
Normalizer = Callable[[str, str], str]
@dataclass(frozen=True)
class LyricIds:
    """Lyric ids for the model (at most ``limit``) and how much of the lyrics did not fit."""

    ids: list[int]
    mask: list[int]
    total_tokens: int            # ids the whole lyrics make, before the cut
    limit: int | None
    first_cut_line: int | None   # index of the first line reaching past the limit (None: it fits)
    line_count: int

    @property
    def cut_tokens(self) -> int:
        return self.total_tokens - len(self.ids)

    def warning(self) -> str | None:
        """What to tell the user when the lyrics were cut (None when they fit)."""
        if not self.cut_tokens:
            return None
        return (f"lyrics too long: {self.total_tokens} tokens, the model reads at most {self.limit} (the "
                f"longest lyrics ACE-Step was trained on). Cut in line {self.first_cut_line + 1} of "
                f"{self.line_count}: the last {self.cut_tokens} tokens are ignored. Shorten the lyrics "
                "(the lyric editor under the lyrics box shows where the limit falls).")


_JAPANESE_NOTE = "romaji by pykakasi; the original app uses cutlet and may read it differently"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_text(text: str) -> str:
    """Lone surrogates (possible in a Python str, not in UTF-8) -> U+FFFD, which reads as [UNK];
    the BPE library refuses them."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _pieces(text: str, size: int = LONG_LINE_CHARS) -> list[str]:
    """``text`` itself when short, else consecutive pieces of at most ``size`` characters, cut
    at the last whitespace within the limit where there is one."""
    pieces = []
    while len(text) > size:
        cut = max(text.rfind(" ", 0, size + 1), text.rfind("\t", 0, size + 1))
        cut = cut if cut > 0 else size
        pieces.append(text[:cut])
        text = text[cut:].lstrip()
    return pieces + [text]


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
    steps; the defaults reproduce the original (language.py, normalize.py)."""

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
        # Lines repeat (choruses) and ComfyUI re-encodes unchanged prompts: remember results.
        self._line_cache = lru_cache(maxsize=8192)(self._tokenize_line)

    def unknown_characters(self, text: str) -> list[str]:
        """Characters of cleaned ``text`` that the vocabulary cannot spell (each reads as [UNK]),
        in order of first appearance. BPE starts from single characters, so a character is
        spellable exactly when it is a token of its own."""
        seen: dict[str, None] = {}
        for char in _ADDED_TOKEN.sub(" ", text):   # "[verse]", "[fr]": one id each, not characters
            if not char.isspace() and char not in seen and self.bpe.token_to_id(char) is None:
                seen[char] = None
        return list(seen)

    def encode_text(self, text: str, lang: str) -> list[int]:
        """BPE ids of already-cleaned text with its language prefix (no line-end id)."""
        marked = (language_token(lang) + text).replace(" ", "[SPACE]")
        return self.bpe.encode(marked).ids

    def _tokenize_line(self, line: str) -> LyricLine:
        if not line:
            return LyricLine(source="", language=None, text="", ids=())
        tagged, body = split_language_tag(line)
        structure = bool(_STRUCTURE_LINE.match(body))
        detected = None
        if structure:
            lang = "en"  # "[Verse]", "[Chorus 2]": English cleaning and prefix, as the original
        elif tagged is not None:
            lang = tagged
        else:
            detected = self.detect_language(line[:LONG_LINE_CHARS])
            lang = canonical_language(detected)
        note = _JAPANESE_NOTE if lang == "ja" and self.normalize is default_normalize else ""
        try:
            text = " ".join(filter(None, (self.normalize(piece, lang) for piece in _pieces(body))))
        except Exception as err:  # keep the line (the original would drop it); say why
            text = clean_basic(body)
            note = f"could not normalise as {lang} ({type(err).__name__}: {err}); kept lowercased"
        if len(line) > LONG_LINE_CHARS:
            note = (note + "; " if note else "") + (
                f"line longer than {LONG_LINE_CHARS} characters: language from its start, normalised in pieces")
        return LyricLine(source=line, language=lang, text=text, ids=tuple(self.encode_text(text, lang)),
                         structure=structure, explicit_language=tagged is not None, detected=detected,
                         note=note)

    def tokenize_line(self, raw_line: str) -> LyricLine:
        return self._line_cache(_valid_text(raw_line).strip())

    def tokenize_lines(self, lyrics: str) -> list[LyricLine]:
        return [self.tokenize_line(raw) for raw in lyrics.split("\n")]

    def encode(self, lyrics: str, limit: int | None = LYRIC_TOKEN_LIMIT) -> list[int]:
        """Lyric ids: [261], then each line's ids followed by 2, cut after ``limit`` ids; "" -> [0]."""
        return self.encode_limited(lyrics, limit).ids

    def encode_with_mask(self, lyrics: str, limit: int | None = LYRIC_TOKEN_LIMIT) -> tuple[list[int], list[int]]:
        """(ids, mask). Empty lyrics give ([0], [0]): one masked "no lyrics" token, as the original."""
        encoded = self.encode_limited(lyrics, limit)
        return encoded.ids, encoded.mask

    def encode_limited(self, lyrics: str, limit: int | None = LYRIC_TOKEN_LIMIT) -> "LyricIds":
        """The ids the model reads, at most ``limit`` of them (None: no limit), and what was cut.

        The cut keeps the first ``limit`` ids, as the original's training data loader does
        (text2music_dataset.py: ``lyric_token_idx[:4096]``). The original's inference pipeline
        does not cut at all, and its lyric encoder's attention then needs memory quadratic in the
        length (100 KB of lyrics: about 60,000 ids, hundreds of GB), so nothing past the limit
        may reach the model."""
        if len(lyrics) == 0:
            return LyricIds(ids=[NULL_ID], mask=[0], total_tokens=1, limit=limit, first_cut_line=None, line_count=0)
        lines = self.tokenize_lines(lyrics)
        ids, first_cut = [START_ID], None
        for index, line in enumerate(lines):
            ids += list(line.ids) + [SPACE_ID]
            if first_cut is None and limit is not None and len(ids) > limit:
                first_cut = index
        total = len(ids)
        if first_cut is not None:
            del ids[limit:]
        return LyricIds(ids=ids, mask=[1] * len(ids), total_tokens=total, limit=limit, first_cut_line=first_cut,
                        line_count=len(lines))

    def preview(self, lyrics: str, limit: int = LYRIC_TOKEN_LIMIT) -> LyricsPreview:
        """Per-line records, the total id count and how much of it lies beyond ``limit``."""
        if len(lyrics) == 0:
            return LyricsPreview(lines=[], total_tokens=1, limit=limit, cut_tokens=0, first_cut_line=None,
                                 warnings=["no lyrics: the model gets the single masked 'no lyrics' id"])
        lines = self.tokenize_lines(lyrics)
        total, first_cut = 1, None
        for index, line in enumerate(lines):
            total += line.token_count
            if total > limit and first_cut is None:
                first_cut = index
        cut = max(0, total - limit)
        warnings = [w for w in (detection_warning(), number_words_warning()) if w]
        if cut:   # first: the panel shows the warnings at its top, the most important one first
            warnings.insert(0, f"the lyrics are {total} tokens long; the model reads at most {limit} (the longest "
                            f"lyrics it was trained on): the last {cut} tokens, from line {first_cut + 1} on, "
                            "are cut off when it runs")
        unknown = sum(line.unknown_count for line in lines)
        if unknown:
            chars = self.unknown_characters("".join(line.text for line in lines if line.unknown_count))
            named = ", ".join(f"'{c}' (U+{ord(c):04X})" for c in chars[:12]) + (" ..." if len(chars) > 12 else "")
            where = [str(i + 1) for i, line in enumerate(lines) if line.unknown_count]
            warnings.append(f"{unknown} character(s) are not in the lyric vocabulary and read as [UNK]: {named} "
                            f"(line{'s' if len(where) > 1 else ''} {', '.join(where[:10])}{' ...' if len(where) > 10 else ''})")
        tags = [(i, line.unknown_tag) for i, line in enumerate(lines) if line.unknown_tag]
        if tags:
            listed = ", ".join(f"{tag} (line {i + 1})" for i, tag in tags[:8]) + (" ..." if len(tags) > 8 else "")
            warnings.append(f"unknown tag{'s' if len(tags) > 1 else ''} {listed}: not one of the model's structure "
                            f"tags ({', '.join(STRUCTURE_TAGS)}) or language tags ([en], [fr], ...); read as text")
        return LyricsPreview(lines=lines, total_tokens=total, limit=limit, cut_tokens=cut,
                             first_cut_line=first_cut, warnings=warnings)

    def decode(self, ids) -> str:
        """Readable text of ids, as the original decodes them ([SPACE] -> " ", [STOP] dropped)."""
        text = self.bpe.decode([int(i) for i in ids], skip_special_tokens=False)
        return text.replace(" ", "").replace("[SPACE]", " ").replace("[STOP]", "")


__all__ = [
    "LyricTokenizer", "LyricLine", "LyricsPreview", "LyricIds", "SUPPORTED_LANGUAGES", "STRUCTURE_TAGS", "START_ID",
    "SPACE_ID", "NULL_ID", "UNK_ID", "LYRIC_TOKEN_LIMIT", "default_normalize",
    "default_detect_language", "canonical_language", "split_language_tag", "language_token",
]
# The text normalisation (clean_english, spell_cardinal, ...) has one home: acestep_core.text.normalize.

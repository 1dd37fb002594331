"""Per-line language detection, reproducing ACE-Step's choice.

The original (``pipeline_ace_step.get_lang``) runs a vendored copy of LangSegment 0.3.5 over each
lyric line, with py3langid 0.3.0 as the classifier and a filter list of all 97 langid languages,
then takes the language with the largest character count; when that is English and anything else
was found, it takes the runner-up. The resulting code is then mapped to the 17 languages the lyric
vocabulary has tokens for (anything else becomes English).

LangSegment is a text segmenter built for TTS, full of heuristics; since the model learnt from
lyrics tokenized under whatever it decided, we reproduce its decisions, quirks included (they are
listed at the end of this docstring). How it works on one line:

1. Placeholders. Eight patterns are applied in turn, each replacing its matches in the line with
   numbered placeholders ``⑥<tag><6 digits>⑥`` remembered with the matched text:
   ``<xx>..</xx>`` markup, Hangul runs, Thai runs, Cyrillic runs, digit groups joined by
   punctuation, Latin runs (a-z, A-Z and the lowercase French/Vietnamese accented letters; runs
   include the punctuation and spaces after them), then '..' / ".." quotes and bracket quotes.
   A pattern whose single match is the whole line is left alone.
2. The line is split at the placeholders. Placeholders are handled by their pattern's rule
   (Hangul -> ko, Cyrillic -> ru, Thai -> th, numbers -> the first segment's language or zh, Latin
   -> the langid classification of each sentence in the run); the text between them goes through
   the CJK rule: split at punctuation, merge pieces of two characters or less into the next one,
   classify each with langid, and settle short Han-character pieces between zh and ja with extra
   rules (kana -> ja, low confidence -> ja, otherwise "undecided zh|ja" resolved by the next
   segment).
3. Segments are merged with their neighbours of the same language; every saved segment adds its
   length (twice for zh) to its language's count. English text is counted after a space is put
   before every inner capital letter and one after the segment ("iPhone" -> "i Phone ").

Quirks reproduced: a line with no letters at all ("...", "12.5", an emoji) is counted as zh;
inside a Latin run, capital accented letters (É, Ü) and letters such as ß, ł, ş, ő are not Latin,
so they fall into the CJK rule; an undecided zh|ja segment at the end of a line is dropped.

Without the py3langid 0.3.0 model (``langid_model``), detection falls back to a script count
(Hangul -> ko, kana -> ja, Han -> zh, Cyrillic -> ru, Arabic -> ar, Devanagari -> hi, else en),
and ``detection_warning()`` says so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .langid_model import load_model, model_error

# py3langid's 97 languages: LangSegment's filter list in the original (language_filters.default).
LANGID_LANGUAGES = (
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu he hi "
    "hr ht hu hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt nb ne nl nn "
    "no oc or pa pl ps pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl tr ug uk ur vi vo wa xh zh "
    "zu").split()
# LangSegment tests some codes against the list joined with "-", i.e. as substrings of it.
_FILTER_STRING = "-".join(LANGID_LANGUAGES)
_FIRST_FILTER = LANGID_LANGUAGES[0]  # "af": a code "in" it (a substring) also passes the filter

# Short Han-only pieces: below this langid confidence the filter order decides, and "ja" comes
# before "zh" in the list, so they become Japanese.
_CJK_CONFIDENT = 0.89
_CJK_SURE = 0.90

_PLACEHOLDER = re.compile(r"(⑥\$*\d+[\d]{6,}⑥)")     # any placeholder (also removed from input)
_NUMBER_PLACEHOLDER = re.compile(r"(⑥\d{6,}⑥)")        # placeholders of the number pattern
_PUNCTUATION = re.compile(r"([^\w\s]+)")
_SENTENCE = re.compile(r"(.*?[。.?？!！]+[\n]{,1})")
_LATIN_EXTRA = ("àáâãäåæçèéêëìíîïðñòóôõöùúûüýþÿ"  # lowercase French letters
                "đơưăáàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựôâêơưỷỹ")  # Vietnamese


def _script_run(letters: str) -> re.Pattern:
    """A run of ``letters`` words with their trailing punctuation/spaces, optionally opened by
    quotes or brackets (LangSegment's shared run pattern)."""
    return re.compile(rf'(([【《（(“‘"\']*[{letters}]+[\W\s]*)+)')


# (tag, pattern, rule name), in the order LangSegment applies them.
_PATTERNS = (
    ("$1", re.compile(r"(<([a-zA-Z|-]*)>(.*?)<\/*[a-zA-Z|-]*>)"), "markup"),
    ("$6", _script_run("\uac00-\ud7a3"), "ko"),
    ("$8", _script_run("\u0e00-\u0e7f"), "th"),
    ("$7", _script_run("А-Яа-яЁё"), "ru"),
    ("00", re.compile(r"(\W*\d+\W+\d*\W*\d*)"), "number"),
    ("$5", _script_run("a-zA-Z" + _LATIN_EXTRA), "latin"),
    ("$3", re.compile(r'(["\'])(.*?)(\1)'), "quote"),
    ("$4", re.compile(r"([\n]*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*[\n]{,1})"), "quote"),
)


def _is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _has_han(text: str) -> bool:
    return any(_is_han(c) for c in text)


def _has_kana(text: str) -> bool:
    return any("\u3040" <= c <= "\u30ff" for c in text)


def _squeeze(text: str) -> str:
    """LangSegment's text for langid: every run of non-word characters becomes one space, runs
    of a repeated character become one character, ends stripped."""
    text = re.sub(r"(.*?)([^\w]+)", r"\1 ", text)
    return re.sub(r"(.)\1+", r"\1", text).strip()


def _without_punctuation(text: str) -> tuple[str, bool]:
    """(text without punctuation runs and newlines, stripped; whether only digits remain)."""
    if text == "\n":
        return text, False
    bare = _PUNCTUATION.sub("", re.sub(r"\n+", "", text)).strip()
    return bare, not re.sub(r"\d+", "", bare)


def _is_punctuation_only(text: str) -> bool:
    return not _PUNCTUATION.sub("", re.sub(r"\n+", "", text)).strip()


def _space_capitals(text: str) -> str:
    """English segments as LangSegment stores (and counts) them: "iPhone" -> "i Phone "."""
    return re.sub(r"(?<!\b)([A-Z])", r" \1", text).strip("-") + " "


def _ssml_text(kind: str, text: str) -> tuple[str, str]:
    """The few SSML tags LangSegment reads out in Chinese (<number>, <telephone>, <currency>,
    <date>): only their length matters here, for the counts. Digits become one Han numeral each
    (exact for number/telephone; currency and date read numbers differently in the original and
    are approximated this way)."""
    digits = "零一二三四五六七八九"
    read = re.sub(r"\d", lambda m: digits[int(m.group(0))], text.replace("+86", "") if kind == "telephone" else text)
    return "zh", read.replace(".", "点")


@dataclass
class Segment:
    lang: str
    text: str
    score: float
    symbol: object = None  # markup segments: True (language tags) or the SSML tag name


@dataclass
class LineAnalysis:
    """What the segmenter found in one line."""

    segments: list[Segment] = field(default_factory=list)
    counts: dict[str, int] | None = None  # language -> characters (zh doubled), in first-seen order
    language: str = "en"                  # the original's get_lang() result (a langid code)


class _LineSegmenter:
    """LangSegment's processing of a single line (see the module docstring)."""

    def __init__(self, classify):
        self.classify_raw = classify
        self.words: list[Segment] = []
        self.waiting: list[Segment] = []        # undecided "zh|ja" segments
        self.counts: dict[str, int] | None = None
        self.saved: dict[str, tuple[str, object]] = {}  # placeholder -> (rule, match)
        self.at_line_end = False

    # -- langid -------------------------------------------------------------------------------
    def classify(self, text: str) -> tuple[str, float]:
        lang, score = self.classify_raw(text)
        return lang, round(score, 3)

    # -- step 1: placeholders --------------------------------------------------------------------
    def substitute(self, text: str) -> str:
        for tag, pattern, rule in _PATTERNS:
            matches = pattern.findall(text)
            if len(matches) == 1 and "".join(matches[0]) == text:
                continue
            for i, match in enumerate(matches):
                key = f"⑥{tag}{i:06d}⑥"
                text = pattern.sub(key.replace("\\", "\\\\"), text, count=1)
                self.saved[key] = (rule, match)
        return text

    # -- step 2: segments --------------------------------------------------------------------------
    def process(self, text: str, top_level: bool) -> None:
        parts = _PLACEHOLDER.split(text)
        for index, part in enumerate(parts):
            if top_level:
                self.at_line_end = index >= len(parts) - 1
            if _PLACEHOLDER.match(part):
                rule, match = self.saved[part]
                getattr(self, f"rule_{rule}")(match)
            else:
                self.rule_cjk(part)

    def rule_markup(self, match) -> None:
        _, tag, text = match
        if tag in _FILTER_STRING:  # "<zh>你好</zh>": a language tag
            self.add(tag, text, 1.0, symbol=True)
        else:
            lang = tag
            if tag in ("number", "telephone", "currency", "date"):
                lang, text = _ssml_text(tag, text)
            self.add(lang, text, 1.0, symbol=tag)

    def rule_ko(self, match) -> None:
        self.add("ko", match[0], 1.0)

    def rule_th(self, match) -> None:
        self.add("th", match[0], 1.0)

    def rule_ru(self, match) -> None:
        self.add("ru", match[0], 1.0)

    def rule_number(self, match) -> None:
        self.add(self.words[0].lang if self.words else "zh", match, 0.0)

    def rule_latin(self, match) -> None:
        for sentence in _SENTENCE.split(match[0]):
            if sentence.strip():
                # Every langid code is in the filter list, so the classification always stands.
                lang, score = self.classify(_squeeze(sentence))
                self.add(lang, sentence, score)

    def rule_quote(self, match) -> None:
        text = "".join(match)
        if _PLACEHOLDER.findall(text):
            self.process(text, top_level=False)
        elif len(_squeeze(match[1])) <= 5:
            self.rule_cjk(text)
        else:
            lang, score = self.classify(_squeeze(match[1]))
            self.add(lang, text, score)

    def rule_cjk(self, segment: str) -> None:
        """Plain text between placeholders, split at punctuation (LangSegment's _parse_language)."""
        pieces = _PUNCTUATION.split(segment)
        last = len(pieces) - 1
        line_end = self.at_line_end
        for i in range(len(pieces)):
            text = pieces[i]
            if not text:
                continue
            at_end = i >= last
            following = pieces[i + 1] if not at_end else ""
            if not at_end and (_is_punctuation_only(text) or _is_punctuation_only(following)):
                pieces[i + 1] = text + following  # punctuation joins the next piece
                continue
            clean = _squeeze(re.sub(r"\d+", "", _NUMBER_PLACEHOLDER.sub("", text)))
            if not at_end and len(clean) <= 2:
                pieces[i + 1] = text + following  # too short to classify: join the next piece
                continue
            lang, score = self.classify(clean)
            prev_lang = self.words[-1].lang if self.words else None
            if lang != "zh" and all(_is_han(c) for c in re.sub(r"\s", "", clean)):
                lang, score = "zh", 1
            if len(clean) <= 5 and _has_han(clean):
                if score < _CJK_CONFIDENT:
                    lang = "ja"
                if _has_kana(clean):
                    lang = "ja"
                elif len(clean) > 2 and score > _CJK_SURE:
                    pass
                elif at_end and line_end:
                    lang = "zh" if len(clean) <= 1 else lang
                else:
                    undecided = ("zh|ja" if lang == "zh" or (len(clean) <= 2 and prev_lang == "zh")
                                 else "ja|zh")
                    visible = re.sub(r"\s+", "", text)
                    follows_prev = bool(prev_lang) and (prev_lang in undecided or undecided in prev_lang)
                    if visible[-1] in "。.":
                        lang = prev_lang if follows_prev and self.words else lang
                    else:
                        lang = undecided + "|…"
            text = _NUMBER_PLACEHOLDER.sub(lambda m: self._restore_number(m.group(0)), text)
            self.add(lang, text, score)

    def _restore_number(self, key: str) -> str:
        rule, match = self.saved.get(key, (None, key))
        return match if rule is not None else key

    # -- step 3: saving and counting ---------------------------------------------------------------
    def add(self, lang: str | None, text: str | None, score: float, symbol=None) -> None:
        """LangSegment's _addwords: resolve undecided segments, then save."""
        if text != "\n" and (text is None or not text.strip()):
            return
        lang = (lang or "").lower()
        if lang == "en":
            text = _space_capitals(text)
        had_waiting = bool(self.waiting)
        previous = self.waiting.pop() if had_waiting else None
        if previous is None and self.words:
            previous = self.words[-1]
        if previous is not None and "|" in previous.lang:
            if lang in previous.lang:  # the next segment decides: "zh|ja" followed by zh -> zh
                previous.lang = lang = lang.split("|")[0]
            else:
                previous.lang = previous.lang.split("|")[0]
            if had_waiting:
                previous = self.save(previous.lang, previous.text, previous.score, previous.symbol)
        prev_lang = previous.lang if previous is not None else None
        if "|" in lang and prev_lang and prev_lang not in lang and "…" not in lang:
            lang = lang.split("|")[0]
        if "|" in lang:
            self.waiting.append(Segment(lang, text, score, symbol))
        else:
            self.save(lang, text, score, symbol)

    def save(self, lang: str, text: str, score: float, symbol=None) -> Segment:
        """LangSegment's _saveData: merge into the previous segment or append, and count."""
        bare, only_digits = _without_punctuation(text)
        previous = self.words[-1] if self.words else None
        if symbol is None and previous is not None and previous.symbol is None:
            if not bare or only_digits:
                lang = previous.lang  # punctuation and numbers take the previous language
            if previous.lang == lang:
                self.count(lang, text)
                previous.text += text
                return previous
            if _without_punctuation(previous.text)[1]:  # a number before: it joins this segment
                text = previous.text + text
                self.words.pop()
        segment = Segment(lang, text, score, symbol)
        if "?" in lang or lang in LANGID_LANGUAGES or lang in _FIRST_FILTER:
            self.words.append(segment)
            self.count(lang, text)
        return segment

    def count(self, lang: str, text: str) -> None:
        if self.counts is None:
            self.counts = {}
        if "|" not in lang:
            self.counts[lang] = self.counts.get(lang, 0) + len(text) * (2 if lang == "zh" else 1)


def analyse_line(line: str, classify=None) -> LineAnalysis:
    """Segment one line as the original does; ``classify(text) -> (code, probability)`` defaults
    to the py3langid 0.3.0 model. Raises RuntimeError when that model is unavailable."""
    if classify is None:
        model = load_model()
        if model is None:
            raise RuntimeError(model_error())
        classify = model.classify
    seg = _LineSegmenter(classify)
    text = _PLACEHOLDER.sub("", line)
    for chunk in re.findall(r".*\n*", text):
        if chunk.strip():
            seg.at_line_end = False
            seg.saved = {}
            seg.process(seg.substitute(chunk), top_level=True)
    result = LineAnalysis(segments=seg.words, counts=seg.counts)
    if seg.counts is None:
        # Nothing was saved (no letters at all): LangSegment's count list is then [("zh", 0)].
        result.language = "zh"
    elif not seg.counts:
        # Only undecided segments were seen: the original's get_lang fails and falls back to en.
        result.language = "en"
    else:
        ranked = sorted(seg.counts.items(), key=lambda kv: kv[1], reverse=True)  # stable: ties keep order
        result.language = ranked[0][0]
        if result.language == "en" and len(ranked) > 1:
            result.language = ranked[1][0]
    return result


# ---------------------------------------------------------------------------------------------
# Fallback without the langid model
# ---------------------------------------------------------------------------------------------
_SCRIPTS = (  # (language, first, last code point)
    ("ko", 0xAC00, 0xD7A3), ("ko", 0x1100, 0x11FF), ("ko", 0x3130, 0x318F),
    ("ja", 0x3040, 0x30FF), ("zh", 0x4E00, 0x9FFF), ("zh", 0x3400, 0x4DBF),
    ("ru", 0x0400, 0x04FF), ("ar", 0x0600, 0x06FF), ("ar", 0x0750, 0x077F), ("hi", 0x0900, 0x097F),
)


def script_language(line: str) -> str:
    """Language by writing system alone (the fallback): the script with most characters, kana
    making a line Japanese even among kanji; Latin and everything else is English."""
    counts: dict[str, int] = {}
    for ch in line:
        cp = ord(ch)
        for lang, first, last in _SCRIPTS:
            if first <= cp <= last:
                counts[lang] = counts.get(lang, 0) + 1
                break
    if not counts:
        return "en"
    if counts.get("ja") and counts.get("zh"):
        counts["ja"] += counts.pop("zh")
    return max(counts, key=counts.get)


def detect_language(line: str) -> str:
    """The original's get_lang(line): a langid code (not yet mapped to the 17 supported ones).
    Never raises: any failure gives "en", as in the original."""
    if load_model() is None:
        return script_language(line)
    try:
        return analyse_line(line).language
    except Exception:  # the original catches everything here too
        return "en"


def detection_warning() -> str | None:
    """None when detection is the original's; otherwise why it is only approximate."""
    error = model_error()
    return None if error is None else f"language detection by script only: {error}"


__all__ = ["detect_language", "analyse_line", "script_language", "detection_warning", "LineAnalysis",
           "Segment", "LANGID_LANGUAGES"]

"""Per-language text normalisation of lyric lines, as ACE-Step's lyric tokenizer does it.

``normalize_line(text, lang)`` gives the text the lyric BPE reads (before the language token):

* ar cs de en es fr hu it nl pl pt ru tr zh ko -- ``clean_multilingual``:
    1. remove '"'; Turkish: İ -> i, Ö -> ö, Ü -> ü first (so lower() does not give "i̇");
    2. lowercase;
    3. numbers spelt out in the language (``expand_numbers``); if any step fails the line keeps
       ALL its digits (the original discards the whole expansion on an error);
    4. abbreviations ("dr." -> "doktor") and symbols ("&", "@", "%", "#", "$", "£", "°") in the
       language's words; whitespace collapsed, ends stripped.
  then Chinese becomes tone-numbered pinyin and Korean is romanized (``romanize``).
* ja -- romaji (pykakasi here, cutlet in the original: see romanize.py), lowercased.
* hi -- lowercase and collapse whitespace only.

Numbers (``expand_numbers``), following the original's order of rewrites:
  * en, ru: "1,000,000.5" loses its commas; other languages: "1.000.000,5" loses its dots (the
    original's pattern lets any character stand where the dot is, and only dots are removed);
  * currency amounts with £ / $ / € before or after: "20€" -> "vingt euros" (whole amounts drop the
    "zero cents" part); a failing amount stops the remaining currencies, nothing else;
  * decimals (not Turkish): "12,5" -> "douze virgule cinq";
  * ordinals by the language's suffixes: "1er", "1.", "1º", "21st" ...;
  * remaining integers.
  English words come from our own speller (identical to num2words 0.5.14, which the original
  calls); the other languages call num2words itself (``lang`` "cz" for Czech, as the original),
  since reproducing its thirteen other languages' grammar by hand would only add divergences.
  Chinese uses its own reader (zh_numbers.py).
"""
from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal

from .romanize import chinese_to_pinyin, romanize_japanese, romanize_korean
from .zh_numbers import normalize_chinese

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
# Currency amounts with the symbol before or after. The original's patterns spell the "after"
# form [0-9.,]*[0-9]+£, which backtracks cubically over long digit runs; [0-9.,]*[0-9]£ matches
# exactly the same strings at the same places (the run cannot cross the symbol) in quadratic time.
_CURRENCIES = (
    ("GBP", "£", re.compile(r"(£[0-9.,]*[0-9]+|[0-9.,]*[0-9]£)")),
    ("USD", "$", re.compile(r"(\$[0-9.,]*[0-9]+|[0-9.,]*[0-9]\$)")),
    ("EUR", "€", re.compile(r"([0-9.,]*[0-9]€|€[0-9.,]*[0-9]+)")),
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
        for currency, symbol, pattern in _CURRENCIES:
            if symbol in text:
                text = pattern.sub(lambda m, c=currency: _money_match(m, c), text)
    except Exception:  # as the original: a failing amount ends the currency step, nothing else
        pass
    text = _DECIMAL.sub(lambda m: spell_float(float(m.group(1).replace(",", "."))), text)
    text = _ORDINAL.sub(lambda m: spell_ordinal(int(m.group(1))), text)
    return _INTEGER.sub(lambda m: spell_cardinal(int(m.group(0))), text)



# ---------------------------------------------------------------------------------------------
# Other languages' numbers (num2words)
# ---------------------------------------------------------------------------------------------
class NumberWordsUnavailable(RuntimeError):
    """num2words is not installed: numbers of languages other than en and zh stay digits."""


def _num2words(value, lang: str, **kwargs) -> str:
    try:
        from num2words import num2words
    except ImportError as err:
        raise NumberWordsUnavailable("num2words is not installed (pip install -r requirements.txt)") from err
    return num2words(value, lang="cz" if lang == "cs" else lang, **kwargs)


def number_words_warning() -> str | None:
    """None when num2words is importable; otherwise what is lost without it."""
    try:
        import num2words as _module
        del _module  # only whether it imports
    except ImportError:
        return ("num2words is not installed: numbers in languages other than English and Chinese are "
                "left as digits (pip install -r requirements.txt)")
    return None


# Suffixes that make a number an ordinal, per language (the original's patterns).
_ORDINALS = {
    "en": re.compile(r"([0-9]+)(st|nd|rd|th)"),
    "es": re.compile(r"([0-9]+)(º|ª|er|o|a|os|as)"),
    "fr": re.compile(r"([0-9]+)(º|ª|er|re|e|ème)"),
    "de": re.compile(r"([0-9]+)(st|nd|rd|th|º|ª|\.(?=\s|$))"),
    "pt": re.compile(r"([0-9]+)(º|ª|o|a|os|as)"),
    "it": re.compile(r"([0-9]+)(º|°|ª|o|a|i|e)"),
    "pl": re.compile(r"([0-9]+)(º|ª|st|nd|rd|th)"),
    "ar": re.compile(r"([0-9]+)(ون|ين|ث|ر|ى)"),
    "cs": re.compile(r"([0-9]+)\.(?=\s|$)"),
    "ru": re.compile(r"([0-9]+)(-й|-я|-е|-ое|-ье|-го)"),
    "nl": re.compile(r"([0-9]+)(de|ste|e)"),
    "tr": re.compile(r"([0-9]+)(\.|inci|nci|uncu|üncü|\.)"),
    "hu": re.compile(r"([0-9]+)(\.|adik|edik|odik|edik|ödik|ödike|ik)"),
    "ko": re.compile(r"([0-9]+)(번째|번|차|째)"),
}
# How num2words joins units and cents per language: cut there for whole amounts.
_CURRENCY_AND = {"en": ", ", "es": " con ", "fr": " et ", "de": " und ", "pt": " e ", "it": " e ", "pl": ", ",
                 "cs": ", ", "ru": ", ", "nl": ", ", "ar": ", ", "tr": ", ", "hu": ", ", "ko": ", "}
# "1.000.000,5" -> "1000000,5" (the "." in the pattern is any character; only dots are removed)
_DOT_GROUPED_NUMBER = re.compile(r"\b\d{1,3}(.\d{3})*(\,\d+)?\b")


def _currency_words(match: re.Match, lang: str, currency: str) -> str:
    amount = float(re.sub(r"[^\d.]", "", match.group(0).replace(",", ".")))  # may raise ValueError
    words = _num2words(amount, lang, to="currency", currency=currency)
    if amount.is_integer():
        cut = words.rfind(_CURRENCY_AND[lang])
        if cut != -1:
            words = words[:cut]
    return words


def _expand_numbers_num2words(text: str, lang: str) -> str:
    if lang == "ru":
        text = _GROUPED_NUMBER.sub(lambda m: m.group(0).replace(",", ""), text)
    else:
        text = _DOT_GROUPED_NUMBER.sub(lambda m: m.group(0).replace(".", ""), text)
    try:
        for currency, symbol, pattern in _CURRENCIES:
            if symbol in text:
                text = pattern.sub(lambda m, c=currency: _currency_words(m, lang, c), text)
    except Exception:  # the original ignores any failure here (and skips the later currencies)
        pass
    if lang != "tr":
        text = _DECIMAL.sub(lambda m: _num2words(float(m.group(1).replace(",", ".")), lang), text)
    text = _ORDINALS[lang].sub(lambda m: _num2words(int(m.group(1)), lang, ordinal=True), text)
    return _INTEGER.sub(lambda m: _num2words(int(m.group(0)), lang), text)


def expand_numbers(text: str, lang: str) -> str:
    """Numbers of a lowercased line spelt out in ``lang``. Raises on failure (the caller keeps
    the line's digits then)."""
    if lang == "en":
        return expand_english_numbers(text)
    if lang == "zh":
        return normalize_chinese(text)
    return _expand_numbers_num2words(text, lang)


# ---------------------------------------------------------------------------------------------
# Abbreviations and symbols
# ---------------------------------------------------------------------------------------------
def _abbreviations(pairs, ending=r"\.") -> list[tuple[re.Pattern, str]]:
    return [(re.compile(rf"\b{short}{ending}", re.IGNORECASE), long) for short, long in pairs]


# In order (a shorter form must not come before a longer one it is a prefix of).
ABBREVIATIONS = {
    "en": _abbreviations([
        ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
        ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
        ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
        ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort")]),
    "es": _abbreviations([("sra", "señora"), ("sr", "señor"), ("dr", "doctor"), ("dra", "doctora"),
                          ("st", "santo"), ("co", "compañía"), ("jr", "junior"), ("ltd", "limitada")]),
    "fr": _abbreviations([("mme", "madame"), ("mr", "monsieur"), ("dr", "docteur"), ("st", "saint"),
                          ("co", "compagnie"), ("jr", "junior"), ("ltd", "limitée")]),
    "de": _abbreviations([("fr", "frau"), ("dr", "doktor"), ("st", "sankt"), ("co", "firma"), ("jr", "junior")]),
    "pt": _abbreviations([("sra", "senhora"), ("sr", "senhor"), ("dr", "doutor"), ("dra", "doutora"),
                          ("st", "santo"), ("co", "companhia"), ("jr", "júnior"), ("ltd", "limitada")]),
    "it": _abbreviations([("sig", "signore"), ("dr", "dottore"), ("st", "santo"), ("co", "compagnia"),
                          ("jr", "junior"), ("ltd", "limitata")]),
    "pl": _abbreviations([("p", "pani"), ("m", "pan"), ("dr", "doktor"), ("sw", "święty"), ("jr", "junior")]),
    "cs": _abbreviations([("dr", "doktor"), ("ing", "inženýr"), ("p", "pan")]),
    "ru": _abbreviations([("г-жа", "госпожа"), ("г-н", "господин"), ("д-р", "доктор")], ending=r"\b"),
    "nl": _abbreviations([("dhr", "de heer"), ("mevr", "mevrouw"), ("dr", "dokter"), ("jhr", "jonkheer")]),
    "tr": _abbreviations([("b", "bay"), ("byk", "büyük"), ("dr", "doktor")]),
    "hu": _abbreviations([("dr", "doktor"), ("b", "bácsi"), ("nőv", "nővér")]),
    "ar": [], "zh": [], "ko": [],
}

# Words for & @ % # $ £ ° per language (each replaced with spaces around it).
_SYMBOL_ORDER = ("&", "@", "%", "#", "$", "£", "°")
SYMBOL_WORDS = {
    "en": ("and", "at", "percent", "hash", "dollar", "pound", "degree"),
    "es": ("y", "arroba", "por ciento", "numeral", "dolar", "libra", "grados"),
    "fr": ("et", "arobase", "pour cent", "dièse", "dollar", "livre", "degrés"),
    "de": ("und", "at", "prozent", "raute", "dollar", "pfund", "grad"),
    "pt": ("e", "arroba", "por cento", "cardinal", "dólar", "libra", "graus"),
    "it": ("e", "chiocciola", "per cento", "cancelletto", "dollaro", "sterlina", "gradi"),
    "pl": ("i", "małpa", "procent", "krzyżyk", "dolar", "funt", "stopnie"),
    "ar": ("و", "على", "في المئة", "رقم", "دولار", "جنيه", "درجة"),
    "zh": ("和", "在", "百分之", "号", "美元", "英镑", "度"),
    "cs": ("a", "na", "procento", "křížek", "dolar", "libra", "stupně"),
    "ru": ("и", "собака", "процентов", "номер", "доллар", "фунт", "градус"),
    "nl": ("en", "bij", "procent", "hekje", "dollar", "pond", "graden"),
    "tr": ("ve", "at", "yüzde", "diyez", "dolar", "sterlin", "derece"),
    "hu": ("és", "kukac", "százalék", "kettőskereszt", "dollár", "font", "fok"),
    "ko": ("그리고", "에", "퍼센트", "번호", "달러", "파운드", "도"),
}
MULTILINGUAL_LANGUAGES = frozenset(SYMBOL_WORDS)  # the 15 languages of clean_multilingual
_WHITESPACE = re.compile(r"\s+")


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text)


def expand_abbreviations(text: str, lang: str) -> str:
    for pattern, words in ABBREVIATIONS[lang]:
        text = pattern.sub(words, text)
    return text


def expand_symbols(text: str, lang: str) -> str:
    for symbol, words in zip(_SYMBOL_ORDER, SYMBOL_WORDS[lang]):
        text = text.replace(symbol, f" {words} ")
    return text.strip()


# ---------------------------------------------------------------------------------------------
# Cleaners
# ---------------------------------------------------------------------------------------------
def clean_multilingual(text: str, lang: str) -> str:
    """The original's ``multilingual_cleaners(text, lang)`` for one of MULTILINGUAL_LANGUAGES."""
    text = text.replace('"', "")
    if lang == "tr":  # Python's lower() would give "i̇" (i + combining dot) for "İ"
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    try:
        text = expand_numbers(text, lang)
    except Exception:  # too large a number, a language num2words lacks a form for, no num2words...
        pass  # the line keeps all its digits, as in the original
    text = expand_abbreviations(text, lang)
    text = expand_symbols(text, lang)
    return collapse_whitespace(text)


def clean_english(text: str) -> str:
    """The original's ``multilingual_cleaners(text, "en")``."""
    return clean_multilingual(text, "en")


def clean_basic(text: str) -> str:
    """Lowercase and collapse whitespace (the original's treatment of Hindi)."""
    return collapse_whitespace(text.lower())


def normalize_line(text: str, lang: str) -> str:
    """The text of one (stripped) lyric line as the BPE reads it, for language ``lang``."""
    if lang in MULTILINGUAL_LANGUAGES:
        text = clean_multilingual(text, lang)
        if lang == "zh":
            return chinese_to_pinyin(text)
        if lang == "ko":
            return romanize_korean(text)
        return text
    if lang == "ja":
        return romanize_japanese(text).lower()
    return clean_basic(text)  # hi, and any code without its own cleaner


__all__ = [
    "normalize_line", "clean_multilingual", "clean_english", "clean_basic", "expand_numbers",
    "expand_english_numbers", "expand_abbreviations", "expand_symbols", "collapse_whitespace",
    "spell_cardinal", "spell_ordinal", "spell_float", "spell_money", "number_words_warning",
    "NumberWordsUnavailable", "ABBREVIATIONS", "SYMBOL_WORDS", "MULTILINGUAL_LANGUAGES",
]

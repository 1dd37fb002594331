"""Chinese text normalisation before pinyin: numbers read out in Chinese, punctuation to commas.

This reproduces what ACE-Step's Chinese cleaner does (its ``zh_num2words.TextNorm()`` with default
options, a copy of the SpeechIO/WeNet normaliser). The rewrites run in this order over the
line, each rewriting the first occurrence of every match it found:

  date        2024年5月20日 -> 二零二四年五月二十日  (year digit by digit, month/day as numbers)
  money       100元, 3.5万, 20块5 -> 一百元, 三点五万, 二十块五
  mobile      13812345678 -> 一三八一二三四五六七八   (digit by digit)
  landline    010-12345678 -> 零一零一二三四五六七八
  fraction    1/2 -> 二分之一
  percent     50% -> 百分之五十
  quantity    3个, 15本 -> 三个, 十五本              (number before a measure word)
  digits      any run of 4-32 digits -> read digit by digit (2024 -> 二零二四)
  number      12.5 -> 十二点五, 200 -> 两百
  then "P二P" back to "P2P", and finally every punctuation mark (ASCII and CJK) becomes ",".

Reading numbers: units 十 百 千 万 亿 兆 京 ... (myriad grouping, 兆 = 10^12), 零 for inner gaps
(101 -> 一百零一), a leading 一十 shortened to 十 (12 -> 十二), and 二 read 两 before a unit of
100 or more when not right after 十 (200 -> 两百, 2000 -> 两千, but 12 -> 十二, 20 -> 二十).
"""
from __future__ import annotations

import re
import string

DIGITS = "零一二三四五六七八九"
LIANG = "两"
POINT = "点"
# (power of ten, character): 十 百 千 万, then the myriad-grouped large units.
UNITS = [(1, "十"), (2, "百"), (3, "千"), (4, "万")] + [
    ((i + 2) * 4, ch) for i, ch in enumerate("亿兆京垓秭穰沟涧正载")]

_CURRENCY_UNITS = "((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
_MEASURE_WORDS = (
    "(匹|张|座|回|场|尾|条|个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|"
    "砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|"
    "针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|"
    "毫|厘|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|"
    "盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|旬|"
    "纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块)")

_DATE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
_MONEY = re.compile(r"\D+((\d+(\.\d+)?)[多余几]?" + _CURRENCY_UNITS + r"(\d" + _CURRENCY_UNITS + r"?)?)")
_MOBILE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_LANDLINE = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION = re.compile(r"(\d+/\d+)")
_PERCENT = re.compile(r"(\d+(\.\d+)?%)")
_QUANTITY = re.compile(r"(\d+(\.\d+)?)[多余几]?" + _MEASURE_WORDS)
_DIGIT_RUN = re.compile(r"(\d{4,32})")
_NUMBER = re.compile(r"(\d+(\.\d+)?)")
_LATIN_2_LATIN = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")

# Punctuation that becomes ",": CJK punctuation (after the Zhon project's lists) and ASCII.
_CJK_PUNCTUATION = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗"
                    "〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-")
_TO_COMMA = str.maketrans({ch: "," for ch in _CJK_PUNCTUATION + string.punctuation})


def _unit_for(length: int) -> tuple[int, str]:
    """The largest unit whose power is below ``length`` digits."""
    return next(unit for unit in reversed(UNITS) if unit[0] < length)


def _symbols(digits: str) -> list:
    """A digit string as a list of digits (int) and units ((power, char)), e.g. "101" ->
    [1, (2, "百"), 0, 1]. Leading zeros of an inner group give one 零."""
    significant = digits.lstrip("0")
    if not significant:
        return []
    if len(significant) == 1:
        return ([0] if len(digits) != 1 else []) + [int(significant)]
    power, char = _unit_for(len(significant))
    return _symbols(digits[:-power]) + [(power, char)] + _symbols(significant[-power:])


def _character(symbol) -> str:
    if isinstance(symbol, tuple):
        return symbol[1]  # a unit
    if symbol == ".":
        return POINT
    return symbol if symbol == LIANG else DIGITS[symbol]


def read_number(number: str, *, with_units: bool = True, liang: bool = True) -> str:
    """Chinese reading of a decimal numeral "1234" / "12.5"; ``with_units=False`` reads the
    digits one by one. Raises ValueError for more than one ".", as the original."""
    parts = number.split(".")
    if len(parts) > 2:
        raise ValueError(f"invalid number string with more than one dot: {number}")
    whole, fraction = parts[0], parts[1] if len(parts) == 2 else ""
    symbols = _symbols(whole) if with_units and len(whole) > 1 else [int(c) for c in whole]
    if fraction:
        symbols += ["."] + [int(c) for c in fraction]
    if liang:
        for i, sym in enumerate(symbols):
            if sym != 2:
                continue
            after = symbols[i + 1] if i + 1 < len(symbols) else None
            before = symbols[i - 1] if i > 0 else None
            # 2 before a unit of 100 or more, at the start or after a unit other than 十 -> 两
            if (isinstance(after, tuple) and after[0] != 1
                    and (before is None or (isinstance(before, tuple) and before[0] != 1))):
                symbols[i] = LIANG
    text = "".join(_character(s) for s in symbols)
    if text.startswith(POINT):
        return DIGITS[0] + text
    if len(text) >= 2 and text[0] == "一" and text[1] == "十":  # 一十二 -> 十二
        text = text[1:]
    return text


def _read_digits(number: str) -> str:
    return read_number(number, with_units=False, liang=False)


def _read_date(date: str) -> str:
    """"2024年5月20日" -> "二零二四年五月二十日" (the year digit by digit)."""
    try:
        year, rest = date.strip().split("年", 1)
        year = _read_digits(year) + "年"
    except ValueError:
        year, rest = "", date
    month = day = ""
    if rest:
        try:
            month, day = rest.strip().split("月", 1)
            month = read_number(month) + "月"
        except ValueError:
            month, day = "", date
        if day:
            day = read_number(day[:-1]) + day[-1]
    return year + month + day


def _read_money(money: str) -> str:
    for match in _NUMBER.findall(money):
        money = money.replace(match[0], read_number(match[0]))
    return money


def _read_phone(phone: str, landline: bool) -> str:
    parts = phone.split("-") if landline else phone.strip("+").split()
    return "".join(_read_digits(part) for part in parts)


def _read_fraction(fraction: str) -> str:
    numerator, denominator = fraction.split("/")
    return read_number(denominator) + "分之" + read_number(numerator)


def _rewrite_each(pattern: re.Pattern, text: str, read, group: int | None = 0) -> str:
    """Replace the first occurrence of each match's text (``group`` of findall's tuples, or the
    whole string when the pattern has one group) by its reading, in match order."""
    for match in pattern.findall(text):
        found = match if group is None else match[group]
        text = text.replace(found, read(found), 1)
    return text


def normalize_chinese_numbers(text: str) -> str:
    """Numbers, dates, money, phone numbers, fractions and percentages read out in Chinese."""
    text = "^" + text + "$"  # anchors that the \D patterns can match at the ends
    text = _rewrite_each(_DATE, text, _read_date)
    text = _rewrite_each(_MONEY, text, _read_money)
    text = _rewrite_each(_MOBILE, text, lambda s: _read_phone(s, landline=False))
    text = _rewrite_each(_LANDLINE, text, lambda s: _read_phone(s, landline=True))
    text = _rewrite_each(_FRACTION, text, _read_fraction, group=None)
    text = text.replace("％", "%")
    text = _rewrite_each(_PERCENT, text, lambda s: "百分之" + read_number(s.strip().strip("%")))
    text = _rewrite_each(_QUANTITY, text, read_number)
    text = _rewrite_each(_DIGIT_RUN, text, _read_digits, group=None)
    text = _rewrite_each(_NUMBER, text, read_number)
    for whole, left, right in _LATIN_2_LATIN.findall(text):  # "p二p" -> "p2p"
        text = text.replace(whole, left + "2" + right, 1)
    return text.lstrip("^").rstrip("$")


def normalize_chinese(text: str) -> str:
    """The original's Chinese text normaliser: numbers read out, then punctuation -> ","."""
    return normalize_chinese_numbers(text).translate(_TO_COMMA)


__all__ = ["normalize_chinese", "normalize_chinese_numbers", "read_number"]

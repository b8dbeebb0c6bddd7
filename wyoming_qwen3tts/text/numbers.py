"""Number words for the model's ten languages: cardinals, ordinals, decimals, digit by digit.

num2words supplies the words for every language except Chinese, which it lacks; the small
converter here writes Chinese numerals (万/亿 grouping, 零 for inner zeros). Korean native
numbers (한, 두, 세 ...), which Korean uses for hours and counted things, are not in num2words
either, so they are here too. Everything else (gender, case) is passed through to num2words.
"""

from __future__ import annotations

from decimal import Decimal

from num2words import num2words

_ZH_DIGITS = "零一二三四五六七八九"
_ZH_UNITS = ("", "十", "百", "千")
_ZH_GROUPS = ("", "万", "亿", "万亿")

_KO_NATIVE_UNITS = ("", "한", "두", "세", "네", "다섯", "여섯", "일곱", "여덟", "아홉")
_KO_NATIVE_TENS = ("", "열", "스물", "서른", "마흔", "쉰", "예순", "일흔", "여든", "아흔")

# Decimal separator words where the fraction is read digit by digit (or as a number, see decimal()).
DECIMAL_POINT = {
    "ru": "запятая",  # only for numbers num2words cannot read as "целых ... сотых"
    "en": "point",
    "de": "Komma",
    "fr": "virgule",
    "es": "coma",
    "it": "virgola",
    "pt": "vírgula",
    "ja": "点",
    "ko": "점",
    "zh": "点",
}
# Languages that read the digits after the separator as one number when there are at most two.
_FRACTION_AS_NUMBER = {"fr", "es", "it", "pt"}
# Languages written without spaces between words.
UNSPACED = {"zh", "ja"}


# Beyond this, numbers are identifiers rather than amounts, and num2words gives up for some languages.
LARGEST_SPOKEN = 10**15


def cardinal(number: int, language: str, **options: str | bool) -> str:
    """12 -> "twelve", "zwölf", "十二" ...; digit by digit from a quadrillion on."""
    if abs(number) >= LARGEST_SPOKEN:
        return digits(str(abs(number)), language)
    if language == "zh":
        return zh_cardinal(number)
    words = str(num2words(number, lang=language, **options))
    if language == "en":
        words = words.replace(",", "")
    elif language == "ru" and words.startswith(("одна тысяча", "один миллион")) and number < 2_000_000:
        words = words.split(" ", 1)[1]  # "тысяча двести", as it is said
    return words


def ordinal(number: int, language: str, **options: str | bool) -> str:
    """3 -> "third", "dritte", "третий" ..."""
    if abs(number) >= LARGEST_SPOKEN:
        return digits(str(abs(number)), language)
    if language == "zh":
        return "第" + zh_cardinal(number)
    words = str(num2words(number, lang=language, to="ordinal", **options))
    return words.replace(",", "") if language == "en" else words


def digits(text: str, language: str) -> str:
    """ "0170" -> "zero one seven zero": one word per digit."""
    if language == "zh":
        return "".join(_ZH_DIGITS[int(d)] for d in text)
    joiner = "" if language in UNSPACED else " "
    return joiner.join(cardinal(int(d), language) for d in text)


def decimal(whole: int, fraction: str, language: str) -> str:
    """12 and "5" -> "twelve point five", "zwölf Komma fünf", "douze virgule cinq" ..."""
    if language == "ru" and whole < LARGEST_SPOKEN and len(fraction) <= 6:
        return str(num2words(Decimal(f"{whole}.{fraction}"), lang="ru"))
    whole_words = cardinal(whole, language)
    if language in _FRACTION_AS_NUMBER | {"ru"} and len(fraction) <= 3:
        zeros = len(fraction) - len(fraction.lstrip("0"))
        rest = fraction[zeros:]
        parts = [cardinal(0, language)] * zeros + ([cardinal(int(rest), language)] if rest else [])
        fraction_words = " ".join(parts)
    else:
        fraction_words = digits(fraction, language)
    if language in UNSPACED:
        return f"{whole_words}{DECIMAL_POINT[language]}{fraction_words}"
    return f"{whole_words} {DECIMAL_POINT[language]} {fraction_words}"


def zh_cardinal(number: int) -> str:
    """Chinese numerals: 10 -> 十, 105 -> 一百零五, 20003 -> 二万零三."""
    if number < 0:
        return "负" + zh_cardinal(-number)
    if number == 0:
        return _ZH_DIGITS[0]
    groups = []
    while number:
        groups.append(number % 10000)
        number //= 10000
    words = ""
    need_zero = False
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            need_zero = bool(words)
            continue
        if words and (need_zero or group < 1000):
            words += _ZH_DIGITS[0]
        words += _zh_group(group) + _ZH_GROUPS[index]
        need_zero = False
    return words[1:] if words.startswith("一十") else words


def _zh_group(group: int) -> str:
    """One group of four digits (1..9999), with 零 for zeros between digits."""
    words = ""
    pending_zero = False
    for position in range(3, -1, -1):
        digit = group // 10**position % 10
        if digit == 0:
            pending_zero = bool(words)
            continue
        if pending_zero:
            words += _ZH_DIGITS[0]
            pending_zero = False
        words += _ZH_DIGITS[digit] + _ZH_UNITS[position]
    return words


def ko_native(number: int) -> str | None:
    """Korean native numbers before a counter: 1 -> 한, 24 -> 스물네; None above 99 (Sino then)."""
    if not 1 <= number <= 99:
        return None
    tens, units = divmod(number, 10)
    if number == 20:
        return "스무"
    return _KO_NATIVE_TENS[tens] + _KO_NATIVE_UNITS[units]


def russian_form(number: int, one: str, few: str, many: str) -> str:
    """The noun form Russian uses after a whole number: 1 рубль, 2 рубля, 5 рублей, 11 рублей."""
    if 11 <= number % 100 <= 14:
        return many
    if number % 10 == 1:
        return one
    if 2 <= number % 10 <= 4:
        return few
    return many

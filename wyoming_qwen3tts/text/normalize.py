"""Text normalisation: write out what Qwen3-TTS would garble, the way a speaker of the language says it.

normalize(text, language) removes markup and emoji, expands unambiguous abbreviations and
writes out dates, times, phone numbers, money, percentages, temperatures, units, ordinals,
decimals and whole numbers in the language's words. The rules run in that order, each one
on what the ones before left, so "3. Mai" becomes a date before "3" could become a number.

The language may be a BCP-47 code ("de", "de-DE"), a model language name ("german") or
"auto". For "auto" it is guessed from the text: Hangul is Korean, kana Japanese, other Han
characters Chinese, Cyrillic Russian; Latin text is scored by common function words and,
when that is not clear, numbers are read in English, the neutral choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..languages import AUTO, MODEL_TO_BCP47
from .markup import strip_markup
from .numbers import UNSPACED, cardinal, decimal, digits, ko_native, ordinal, russian_form
from .words import (
    ABBREVIATIONS,
    AND,
    CURRENCIES,
    CURRENCY_SYMBOL_ZH,
    CURRENCY_SYMBOLS,
    CURRENCY_WORDS,
    DEGREE,
    FUNCTION_WORDS,
    MINUS,
    MONTH_NAMES,
    PERCENT,
    PLUS,
    RUSSIAN_UNIT_SYMBOLS,
    SCALES,
    SPEED_PREFIX,
    UNIT_SYMBOLS,
    UNITS,
    Noun,
)

LANGUAGES = ("zh", "en", "de", "it", "pt", "es", "ja", "ko", "fr", "ru")
NEUTRAL_LANGUAGE = "en"

_COMMA_DECIMAL = {"de", "fr", "es", "it", "pt", "ru"}
# A number as written in each language: thousands grouped by "," (en), "." (de) or a space (fr).
_NUMBER_COMMA_GROUPS = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?"
_NUMBER_DOT_GROUPS = r"\d{1,3}(?:\.\d{3})+(?:,\d+)?(?!\d|\.\d)|\d+(?:[,.]\d+)?"
_NUMBER_SPACE_GROUPS = r"\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?:,\d+)?(?!\d)|\d+(?:[,.]\d+)?"
NUMBER_PATTERN = {language: _NUMBER_COMMA_GROUPS for language in LANGUAGES}
NUMBER_PATTERN.update({"de": _NUMBER_DOT_GROUPS, "es": _NUMBER_DOT_GROUPS, "it": _NUMBER_DOT_GROUPS})
NUMBER_PATTERN.update({"pt": _NUMBER_DOT_GROUPS, "fr": _NUMBER_SPACE_GROUPS, "ru": _NUMBER_SPACE_GROUPS})
_SIGN = r"(?P<sign>(?<![\w\d])[-−–])?"

_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HAN = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_LATIN_WORD = re.compile(r"[^\W\d_]+")

Rule = Callable[[str, str], str]


def normalize(text: str, language: str | None = AUTO) -> str:
    """Return the text as it should be spoken in the language (BCP-47 code, model name or "auto")."""
    code = resolve_language(language, text)
    text = strip_markup(text, full_stop="。" if code in UNSPACED else ".")
    for rule in _RULES:
        text = rule(text, code)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return re.sub(r" +([,.])", r"\1", text).strip()


def resolve_language(language: str | None, text: str = "") -> str:
    """ "de-DE", "german" -> "de"; "auto", empty or unknown -> guessed from the text."""
    lowered = (language or AUTO).strip().lower()
    if lowered in MODEL_TO_BCP47:
        return MODEL_TO_BCP47[lowered]
    base = lowered.replace("_", "-").split("-")[0]
    return base if base in LANGUAGES else guess_language(text)


def guess_language(text: str) -> str:
    """The language of a text from its script, or for Latin script from its commonest words."""
    if _HANGUL.search(text):
        return "ko"
    if _KANA.search(text):
        return "ja"
    if _HAN.search(text):
        return "zh"
    if _CYRILLIC.search(text):
        return "ru"
    words = [word.lower() for word in _LATIN_WORD.findall(text)]
    scores = {
        language: sum(word in vocabulary.split() for word in words)
        for language, vocabulary in FUNCTION_WORDS.items()
    }
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    best, best_score = ranked[0]
    if best_score >= 2 and best_score > ranked[1][1]:
        return best
    return NEUTRAL_LANGUAGE


# -- numbers as written -------------------------------------------------------------


def parse_number(token: str, language: str) -> tuple[int, str | None]:
    """ "1.234,5" (de) -> (1234, "5"); "12" -> (12, None)."""
    token = re.sub(r"[ \u00a0\u202f]", "", token)
    if language in _COMMA_DECIMAL:
        if re.fullmatch(r"\d{1,3}(\.\d{3})+(,\d+)?", token):
            token = token.replace(".", "")
        token = token.replace(",", ".")
    else:
        token = token.replace(",", "")
    whole, _, fraction = token.partition(".")
    return int(whole), fraction or None


def _say_number(token: str, language: str) -> str:
    whole, fraction = parse_number(token, language)
    if fraction is not None:
        return decimal(whole, fraction, language)
    if re.fullmatch(r"0\d+", token):  # "007", "0170": read digit by digit
        return digits(token, language)
    return cardinal(whole, language)


def _counted(number: int, language: str, gender: str) -> str:
    """A whole number as it agrees with the noun after it: ein Euro, une heure, veintiún grados."""
    words = cardinal(number, language, **({"gender": gender} if language == "ru" else {}))
    last = words.rsplit(" ", 1)[-1]
    head = words[: len(words) - len(last)]
    if language == "de" and words == "eins":
        return "eine" if gender == "f" else "ein"
    if language == "fr" and gender == "f" and last == "un":
        return head + "une"
    if language == "es" and last.endswith("uno"):
        return head + last[:-3] + ("una" if gender == "f" else ("ún" if last != "uno" else "un"))
    if language == "it" and words == "uno":
        return "una" if gender == "f" else "un"
    if language == "pt" and gender == "f" and last in ("um", "dois"):
        return head + ("uma" if last == "um" else "duas")
    return words


def _noun(number: int, fraction: str | None, noun: Noun, language: str) -> str:
    """The form of a noun after a number: 1 euro / 2 euros; Russian 1 рубль / 2 рубля / 5 рублей."""
    if language == "ru":
        return noun[1] if fraction else russian_form(number, noun[0], noun[1], noun[2])
    if len(noun) == 1:
        return noun[0]
    if language == "fr":
        return noun[0] if number < 2 else noun[1]
    return noun[0] if number == 1 and not fraction else noun[1]


def _amount_with_noun(token: str, noun: Noun, language: str) -> str:
    """ "12,5" + Kilometer -> "zwölf Komma fünf Kilometer"; "1" + hora -> "una hora"."""
    whole, fraction = parse_number(token, language)
    if fraction is not None:
        number = decimal(whole, fraction, language)
    elif language == "ko" and noun[0] == "시간":
        number = ko_native(whole) or cardinal(whole, language)
    elif language == "zh" and whole == 2:
        number = "两"
    elif len(noun) > 1:
        number = _counted(whole, language, noun[-1])
    else:
        number = cardinal(whole, language)
    joiner = "" if language in UNSPACED else " "
    word = _noun(whole, fraction, noun, language)
    if language == "it" and number == "una" and word[0] in "aeiou":
        return f"un'{word}"  # un'ora
    return f"{number}{joiner}{word}"


# -- rules, in the order they run ------------------------------------------------------


def _abbreviations(text: str, language: str) -> str:
    for pattern, words in ABBREVIATIONS.get(language, []):

        def expand(match: re.Match[str], words: str = words) -> str:
            ends_text = not match.string[match.end() :].strip() and match.group(0).endswith(".")
            return words + ("." if ends_text else "")

        text = re.sub(pattern, expand, text)
    return text


def _dates(text: str, language: str) -> str:
    def iso(match: re.Match[str]) -> str:
        year = match["y"] or None
        return spoken_date(int(match["d"]), int(match["m"]), year, language, match.string[: match.start()])

    text = re.sub(r"\b(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})\b", _valid(iso), text)
    if language in ("de", "ru"):
        text = re.sub(r"\b(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>\d{4})\b", _valid(iso), text)
    if language == "de":  # "am 3.5." is a date only after a preposition; "Version 3.5." is not
        text = re.sub(
            r"\b(?P<p>am|Am|vom|Vom|zum|bis|ab|Ab|seit|Seit|den|dem) "
            r"(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>)(?!\d)",
            _valid(lambda m: f"{m['p']} {iso(m)}"),
            text,
        )
    if language in ("fr", "es", "it", "pt"):
        text = re.sub(r"\b(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{4})\b", _valid(iso), text)
    months = MONTH_NAMES.get(language)
    if not months:
        return _cjk_dates(text, language)
    short = _ENGLISH_MONTH_ABBREVIATIONS if language == "en" else {}
    names = "|".join([*months, *short])

    def named(match: re.Match[str]) -> str:
        written = match["m"].lower()
        month = (
            short.get(match["m"].title()) or next(i for i, m in enumerate(months) if m.lower() == written) + 1
        )
        name = months[month - 1] if match["m"].title() in short else match["m"]
        before = match.string[: match.start()]
        if language == "en" and match.start("d") < match.start("m"):  # "3 May" -> "the third of May"
            words = f"the {ordinal(int(match['d']), 'en')} of {name}"
            return f"{words}, {_year(match['y'], 'en')}" if match["y"] else words
        return spoken_date(int(match["d"]), month, match["y"], language, before, name)

    patterns = {
        "en": [
            rf"\b(?P<m>{names})\.? (?P<d>\d{{1,2}})(?:st|nd|rd|th)?(?:,? (?P<y>\d{{4}}))?\b",
            rf"\b(?:the )?(?P<d>\d{{1,2}})(?:st|nd|rd|th)? (?:of )?(?P<m>{names})(?:,? (?P<y>\d{{4}}))?\b",
        ],
        "de": [rf"\b(?P<d>\d{{1,2}})\. ?(?P<m>{names})(?: (?P<y>\d{{4}}))?\b"],
        "fr": [rf"\b(?P<d>\d{{1,2}})(?:er)? (?P<m>{names})(?: (?P<y>\d{{4}}))?\b"],
        "es": [rf"\b(?P<d>\d{{1,2}}) de (?P<m>{names})(?: de(?:l)? (?P<y>\d{{4}}))?\b"],
        "it": [rf"\b(?P<d>\d{{1,2}})[º°]? (?P<m>{names})(?: (?P<y>\d{{4}}))?\b"],
        "pt": [rf"\b(?P<d>\d{{1,2}})[ºo°]? de (?P<m>{names})(?: de (?P<y>\d{{4}}))?\b"],
        "ru": [rf"\b(?P<d>\d{{1,2}}) (?P<m>{names})(?: (?P<y>\d{{4}})(?: (?:года|г\.))?)?(?!\w)"],
    }
    for pattern in patterns[language]:
        text = re.sub(pattern, named, text, flags=re.IGNORECASE)
    return text


_ENGLISH_MONTH_ABBREVIATIONS = {"Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "Jun": 6, "Jul": 7, "Aug": 8}
_ENGLISH_MONTH_ABBREVIATIONS.update({"Sep": 9, "Sept": 9, "Oct": 10, "Nov": 11, "Dec": 12})


def _valid(render: Callable[[re.Match[str]], str]) -> Callable[[re.Match[str]], str]:
    """Leave "31-02-..." style non-dates as they are."""

    def checked(match: re.Match[str]) -> str:
        if 1 <= int(match["m"]) <= 12 and 1 <= int(match["d"]) <= 31:
            return render(match)
        return match.group(0)

    return checked


def _year(year: str, language: str) -> str:
    number = int(year)
    if language == "en" or (language == "de" and 1100 <= number < 2000):
        return str(ordinal_year(number, language))
    if language == "zh":
        return digits(year, language)
    return cardinal(number, language)


def ordinal_year(number: int, language: str) -> str:
    """Years as read aloud: 1990 -> "nineteen ninety", "neunzehnhundertneunzig"."""
    from num2words import num2words

    return str(num2words(number, lang=language, to="year")).replace(",", "")


def spoken_date(day: int, month: int, year: str | None, language: str, before: str, written: str = "") -> str:
    months = MONTH_NAMES.get(language)
    name = written or (months[month - 1] if months else "")
    if language == "en":
        words = f"{name} {ordinal(day, 'en')}"
        return f"{words}, {_year(year, language)}" if year else words
    if language == "de":
        nominative = re.search(r"\b(der|Der)\s*$", before) is not None
        words = ordinal(day, "de") + ("" if nominative else "n") + f" {name}"
    elif language == "fr":
        words = ("premier" if day == 1 else cardinal(day, "fr")) + f" {name}"
    elif language in ("es", "pt"):
        first = "primeiro" if language == "pt" else "uno"
        words = (first if day == 1 else cardinal(day, language)) + f" de {name}"
        return f"{words} de {_year(year, language)}" if year else words
    elif language == "it":
        words = ("primo" if day == 1 else cardinal(day, "it")) + f" {name}"
    elif language == "ru":
        nominative = re.search(r"(?i)\b(сегодня|завтра|вчера)\s*$", before) is not None
        case = {"gender": "n"} if nominative else {"case": "g"}
        words = ordinal(day, "ru", **case) + f" {name}"
        return f"{words} {ordinal(int(year), 'ru', case='g')} года" if year else words
    else:
        return _cjk_date(day, month, year, language)
    return f"{words} {_year(year, language)}" if year else words


def _cjk_date(day: int, month: int, year: str | None, language: str) -> str:
    if language == "ko":
        parts = [f"{cardinal(int(year), 'ko')}년"] if year else []
        return " ".join([*parts, _ko_month(month), f"{cardinal(day, 'ko')}일"])
    year_words = f"{_year(year, language)}年" if year else ""
    return f"{year_words}{cardinal(month, language)}月{cardinal(day, language)}日"


def _ko_month(month: int) -> str:
    return {6: "유월", 10: "시월"}.get(month, f"{cardinal(month, 'ko')}월")


def _cjk_dates(text: str, language: str) -> str:
    if language == "zh":
        return re.sub(r"(?<!\d)(\d{4})(?=\s?年)", lambda m: digits(m.group(1), "zh"), text)
    if language == "ko":
        return re.sub(r"(?<!\d)(\d{1,2})(?=\s?월)", lambda m: _ko_month(int(m.group(1)))[:-1], text)
    return text


def _times(text: str, language: str) -> str:
    if language == "en":
        text = re.sub(
            r"\b(?P<h>1[0-2]|0?\d)(?::(?P<m>[0-5]\d))?\s?(?P<x>[ap])\.?m\.?(?=\W|$)",
            lambda m: _time(int(m["h"]), int(m["m"] or 0), language, m["x"].lower()),
            text,
            flags=re.IGNORECASE,
        )
    separators = {"fr": ":h", "pt": ":h"}.get(language, ":")
    suffix = {"de": r"(?:\s?Uhr)", "fr": r"(?:\s?h)", "pt": r"(?:\s?h)"}.get(language, "(?!)")
    dot_needs_uhr = r"(?(dot)\s?Uhr|" + suffix + "?)" if language == "de" else suffix + "?"
    dot = r"(?P<dot>\.)|" if language == "de" else ""
    pattern = (
        rf"(?<![\d.,:])(?P<h>[01]?\d|2[0-3])(?:{dot}[{separators}])(?P<m>[0-5]\d)(?![\d:]){dot_needs_uhr}"
    )
    text = re.sub(pattern, lambda m: _time(int(m["h"]), int(m["m"]), language), text)
    if language == "de":
        text = re.sub(r"(?<![\d.,])(?P<h>[01]?\d|2[0-4]) ?Uhr\b", lambda m: _time(int(m["h"]), 0, "de"), text)
    if language in ("fr", "pt"):
        text = re.sub(
            r"(?<![\d.,])(?P<h>[01]?\d|2[0-4]) ?h\b", lambda m: _time(int(m["h"]), 0, language), text
        )
    if language == "ko":
        text = re.sub(
            r"(?<![\d.,])(\d{1,2}) ?시(?!간)", lambda m: f"{ko_native(int(m.group(1))) or '영'} 시", text
        )
    return text


def _time(hour: int, minute: int, language: str, meridiem: str = "") -> str:
    """A clock time in the 24-hour manner of each language (12-hour with a.m./p.m. in English)."""
    if language == "en":
        words = cardinal(hour, "en")
        if minute:
            words += " " + ("oh " + cardinal(minute, "en") if minute < 10 else cardinal(minute, "en"))
        elif not meridiem:
            words += " hundred" if hour > 12 or hour == 0 else " o'clock"
        return f"{words} {meridiem}.m." if meridiem else words
    if language == "de":
        words = ("ein" if hour == 1 else cardinal(hour, "de")) + " Uhr"
        return f"{words} {cardinal(minute, 'de')}" if minute else words
    if language == "fr":
        words = _counted(hour, "fr", "f") + (" heure" if hour < 2 else " heures")
        return f"{words} {_counted(minute, 'fr', 'f')}" if minute else words
    if language in ("es", "it", "pt"):
        words = _counted(hour, language, "f") if language != "it" else cardinal(hour, "it")
        if language == "pt" and not minute:
            return words + (" hora" if hour == 1 else " horas")
        return f"{words} {AND[language]} {cardinal(minute, language)}" if minute else words
    if language == "ru":
        minutes = "ноль-ноль" if not minute else _minute_digits(minute, "ru")
        return f"{cardinal(hour, 'ru')} {minutes}"
    if language == "ko":
        words = f"{ko_native(hour) or '영'} 시"
        return f"{words} {cardinal(minute, 'ko')} 분" if minute else words
    if language == "ja":
        return f"{cardinal(hour, 'ja')}時" + (f"{cardinal(minute, 'ja')}分" if minute else "")
    if language == "zh":
        hours = "两" if hour == 2 else cardinal(hour, "zh")
        minutes = ("零" if minute < 10 else "") + cardinal(minute, "zh") + "分" if minute else ""
        return f"{hours}点{minutes}"
    return f"{hour}:{minute:02d}"


def _minute_digits(minute: int, language: str) -> str:
    return (
        f"{cardinal(0, language)} {cardinal(minute, language)}" if minute < 10 else cardinal(minute, language)
    )


_PHONE = re.compile(
    r"(?<![\w+.,])(?:"
    r"\+\d{1,3}[ \-/]?(?:\(0\)[ ]?)?\(?\d[\d \-/()]{5,}\d"
    r"|\(\d{2,5}\)[ ]?\d[\d \-]{3,}\d"
    r"|0\d{1,5}[ \-/]\d[\d \-]{2,}\d"
    r"|\d{3}[-.]\d{3}[-.]\d{4}"
    r")(?![\w])"
)


def _phones(text: str, language: str) -> str:
    def say(match: re.Match[str]) -> str:
        written = match.group(0)
        groups = re.findall(r"\d+", written)
        spoken = [spoken_phone_group(group, language) for group in groups]
        separator = {"zh": "，", "ja": "、"}.get(language, ", ")
        prefix = (PLUS[language] + ("" if language in UNSPACED else " ")) if written.startswith("+") else ""
        return prefix + separator.join(spoken)

    text = _PHONE.sub(say, text)
    # Ten or more digits in a row are an identifier or a phone number, never an amount.
    return re.sub(r"(?<![\d.,])\d{10,}(?![\d.,])", lambda m: spoken_phone_group(m.group(0), language), text)


def spoken_phone_group(group: str, language: str) -> str:
    if language == "fr" and len(group) == 2 and group[0] != "0":
        return cardinal(int(group), "fr")  # French reads phone numbers in pairs: 45 -> quarante-cinq
    if language == "zh":
        return digits(group, "zh").replace("一", "幺")
    if language == "ko":
        return "".join("공" if digit == "0" else cardinal(int(digit), "ko") for digit in group)
    if language == "ja":
        return "".join("ゼロ" if digit == "0" else cardinal(int(digit), "ja") for digit in group)
    return digits(group, language)


_RANGE_WORD = {"en": "to", "de": "bis", "fr": "à", "es": "a", "it": "a", "pt": "a", "ja": "から", "zh": "到"}
_NUMBER_SIGN_WORD = {"en": "number", "de": "Nummer", "fr": "numéro", "es": "número", "it": "numero"}
_NUMBER_SIGN_WORD.update({"pt": "número", "ru": "номер"})


def _ranges(text: str, language: str) -> str:
    """ "3-5 Tage" -> "3 bis 5 Tage", "#1" -> "number 1"; the numbers are read by later rules."""
    if language in _NUMBER_SIGN_WORD:
        text = re.sub(r"(?<![\w&])#\s?(?=\d)", _NUMBER_SIGN_WORD[language] + " ", text)
    if language not in _RANGE_WORD:
        return text
    number = NUMBER_PATTERN[language]
    word = _RANGE_WORD[language]
    spaced = "" if language in UNSPACED else " "
    letters = r"A-Za-z\u00c0-\u024f\u0400-\u04ff"
    return re.sub(
        rf"(?<![{letters}\d.,\-–])(?P<a>{number}) ?[-–] ?(?P<b>{number})(?![{letters}\d\-–]|[.,]\d)",
        lambda m: f"{m['a']}{spaced}{word}{spaced}{m['b']}",
        text,
    )


def _money(text: str, language: str) -> str:
    number = NUMBER_PATTERN[language]
    symbols = dict(CURRENCY_SYMBOLS, **(CURRENCY_SYMBOL_ZH if language == "zh" else {}))
    symbol_pattern = "|".join(re.escape(symbol) for symbol in sorted(symbols, key=len, reverse=True))
    words = CURRENCY_WORDS.get(language, {})
    word_pattern = "|".join(sorted(words, key=len, reverse=True)) or "(?!)"

    def prefixed(match: re.Match[str]) -> str:
        return _sign(match, language) + _say_money(match["num"], symbols[match["cur"]], language)

    def suffixed(match: re.Match[str]) -> str:
        code = symbols.get(match["cur"]) or words[match["cur"]]
        return _sign(match, language) + _say_money(match["num"], code, language)

    text = re.sub(rf"{_SIGN}(?P<cur>{symbol_pattern})\s?(?P<num>{number})(?!\w)", prefixed, text)
    return re.sub(
        rf"{_SIGN}(?P<num>{number})\s?(?P<cur>{symbol_pattern}|\b(?:{word_pattern}))(?![\w$])", suffixed, text
    )


def _sign(match: re.Match[str], language: str) -> str:
    if not match["sign"]:
        return ""
    word = MINUS.get(language, {"ja": "マイナス", "ko": "마이너스", "zh": "负"}.get(language, "-"))
    return word + ("" if language in UNSPACED else " ")


def _say_money(token: str, code: str, language: str) -> str:
    whole, fraction = parse_number(token, language)
    main, sub = CURRENCIES[language][code]
    if language == "zh":
        number = decimal(whole, fraction.rstrip("0"), "zh") if fraction and fraction.strip("0") else None
        return (number or cardinal(whole, "zh")) + main[0]
    cents = None
    if fraction is not None and len(fraction) <= 2 and sub is not None:
        cents = int(fraction.ljust(2, "0"))
    elif fraction is not None and fraction.strip("0"):
        return _amount_with_noun(token, main, language)
    joiner = "" if language in UNSPACED else " "
    main_words = _amount_with_noun(str(whole), main, language)
    if not cents:
        return main_words
    assert sub is not None
    sub_words = _amount_with_noun(str(cents), sub, language)
    if whole == 0:
        return sub_words
    if language in ("de", "fr"):  # "zwölf Euro fünfzig", "douze euros cinquante"
        return f"{main_words} {cardinal(cents, language)}"
    link = {"en": " and ", "es": " con ", "it": " e ", "pt": " e "}.get(language, joiner)
    if language in ("es", "it", "pt"):
        return f"{main_words}{link}{cardinal(cents, language)}"
    return f"{main_words}{link}{sub_words}"


def _percentages(text: str, language: str) -> str:
    def say(match: re.Match[str]) -> str:
        sign = _sign(match, language)
        if language == "zh":
            return "百分之" + sign + _say_number(match["num"], "zh")
        whole, fraction = parse_number(match["num"], language)
        noun = PERCENT[language]
        number = _say_number(match["num"], language)
        joiner = "" if language in UNSPACED else " "
        return f"{sign}{number}{joiner}{_noun(whole, fraction, noun, language)}"

    return re.sub(rf"{_SIGN}(?P<num>{NUMBER_PATTERN[language]})\s?[%％]", say, text)


def _temperatures(text: str, language: str) -> str:
    def say(match: re.Match[str]) -> str:
        scale = (match["scale"] or "").upper() or ("C" if match["celsius"] else "")
        negative = bool(match["sign"])
        if language in ("ja", "ko", "zh"):
            return _cjk_temperature(_say_number(match["num"], language), scale, negative, language)
        words = _amount_with_noun(match["num"], DEGREE[language], language)
        if negative:
            words = f"{MINUS[language]} {words}"
        return f"{words} {SCALES[language][scale]}" if scale else words

    pattern = (
        rf"{_SIGN}(?P<num>{NUMBER_PATTERN[language]})\s?(?:°\s?(?P<scale>[CcFf])?|(?P<celsius>℃))(?![A-Za-z])"
    )
    return re.sub(pattern, say, text)


def _cjk_temperature(number: str, scale: str, negative: bool, language: str) -> str:
    if language == "zh":
        unit = {"C": "摄氏度", "F": "华氏度"}.get(scale, "度")
        return ("零下" if negative else "") + number + unit
    if language == "ja":
        return ("マイナス" if negative else "") + ("華氏" if scale == "F" else "") + number + "度"
    return ("영하 " if negative else "") + ("화씨 " if scale == "F" else "") + number + " 도"


def _units(text: str, language: str) -> str:
    units = UNITS[language]
    symbols = [*UNIT_SYMBOLS, *(RUSSIAN_UNIT_SYMBOLS if language == "ru" else {})]
    names = "|".join(re.escape(symbol) for symbol in sorted(symbols, key=len, reverse=True))

    def say(match: re.Match[str]) -> str:
        unit = RUSSIAN_UNIT_SYMBOLS.get(match["unit"], match["unit"])
        unit = unit if unit in units else unit.lower()
        words = _amount_with_noun(match["num"], units[unit], language)
        if unit == "km/h" and language in SPEED_PREFIX:
            words = SPEED_PREFIX[language] + ("" if language in UNSPACED else " ") + words
        return _sign(match, language) + words

    return re.sub(rf"{_SIGN}(?P<num>{NUMBER_PATTERN[language]})\s?(?P<unit>{names})(?![\w/²³])", say, text)


_ARTICLE_DATIVE = r"dem|den|des|am|zum|im|vom|beim|zur|einem|einen|eines|ihrem|seinem"


def _ordinals(text: str, language: str) -> str:
    if language == "en":
        return re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: ordinal(int(m.group(1)), "en"), text)
    if language == "de":
        pattern = rf"\b(?P<art>der|die|das|Der|Die|Das|{_ARTICLE_DATIVE})\s(?P<n>\d{{1,3}})\.(?=\s\w)"

        def german(match: re.Match[str]) -> str:
            ending = "" if match["art"].lower() in ("der", "die", "das") else "n"
            return f"{match['art']} {ordinal(int(match['n']), 'de')}{ending}"

        return re.sub(pattern, german, text)
    if language == "fr":
        text = re.sub(r"\b1(?:er|re|ère)\b", lambda m: "première" if m.group(0) != "1er" else "premier", text)
        return re.sub(r"\b(\d+)(?:e|ème|è)\b", lambda m: ordinal(int(m.group(1)), "fr"), text)
    if language in ("es", "it", "pt"):
        return re.sub(
            r"\b(\d+)\.?(º|ª)(?P<noun>\s[^\W\d_])?",
            lambda m: (
                _romance_ordinal(int(m.group(1)), m.group(2) == "ª", language, bool(m["noun"]))
                + (m["noun"] or "")
            ),
            text,
        )
    if language == "ru":
        return re.sub(r"\b(\d+)-(?P<e>й|я|е|го|му|м|х|ое|ый|ая|ого)\b", _russian_ordinal, text)
    if language == "ko":
        text = re.sub(r"(?<!\d)1\s?번째", "첫 번째", text)
        counters = "개|명|살|시간|번째|번|마리|잔|권|달|가지|켤레|대|병|장"
        return re.sub(
            rf"(?<![\d.,])(\d{{1,2}})\s?({counters})",
            lambda m: f"{ko_native(int(m.group(1))) or cardinal(0, 'ko')} {m.group(2)}",
            text,
        )
    if language == "zh":
        classifiers = (
            "个|只|本|次|天|年|位|件|张|条|岁|杯|台|辆|种|份|周|块|家|双|千|万|亿|百"
            "|公斤|公里|斤|米|克|升|小时|分钟|点|遍|倍"
        )
        return re.sub(rf"(?<![\d.])2(?=\s?(?:{classifiers}))", "两", text)
    return text


def _romance_ordinal(number: int, feminine: bool, language: str, before_noun: bool = False) -> str:
    words = ordinal(number, language)
    if feminine:
        return " ".join(word[:-1] + "a" if word.endswith("o") else word for word in words.split())
    if language == "es" and before_noun and words.endswith(("primero", "tercero")):
        return words[:-1]  # el primer puesto, el tercer piso
    return words


_RUSSIAN_ORDINAL_ENDINGS: dict[str, dict[str, str | bool]] = {
    "й": {},
    "ый": {},
    "я": {"gender": "f"},
    "ая": {"gender": "f"},
    "е": {"gender": "n"},
    "ое": {"gender": "n"},
    "го": {"case": "g"},
    "ого": {"case": "g"},
    "му": {"case": "d"},
    "м": {"case": "p"},
    "х": {"case": "g", "plural": True},
}


def _russian_ordinal(match: re.Match[str]) -> str:
    """ "2-й" -> "второй", "3-го" -> "третьего": the ending written after the hyphen gives case and gender."""
    return ordinal(int(match.group(1)), "ru", **_RUSSIAN_ORDINAL_ENDINGS[match["e"]])


def _years(text: str, language: str) -> str:
    if language == "en":
        text = re.sub(
            r"\b(1[1-9]\d0|20[0-9]0)s\b",
            lambda m: (
                ordinal_year(int(m.group(1)), "en").removesuffix("y") + "ies"
                if m.group(1)[2] != "0"
                else ordinal_year(int(m.group(1)), "en") + "s"
            ),
            text,
        )
        words = r"in|since|from|until|till|by|of|before|after|around|during|year|In|Since|From|By|Until"
        return re.sub(
            rf"\b(?P<w>{words}) (?P<y>1[1-9]\d\d|20\d\d)\b(?![.,]\d)",
            lambda m: f"{m['w']} {ordinal_year(int(m['y']), 'en')}",
            text,
        )
    if language == "de":
        words = r"im Jahre?|Jahr|seit|bis|von|ab|um|vor|nach|Anno|Seit|Bis|Von|Ab|Im Jahre?"
        return re.sub(
            rf"\b(?P<w>{words}) (?P<y>1[1-9]\d\d)\b(?![.,]\d)",
            lambda m: f"{m['w']} {ordinal_year(int(m['y']), 'de')}",
            text,
        )
    return text


def _russian_years(text: str, language: str) -> str:
    """ "2024 года" -> "две тысячи двадцать четвёртого года": the year is an ordinal in its case."""
    if language != "ru":
        return text
    cases = {"год": "n", "года": "g", "году": "p", "г.": "g"}

    def russian(match: re.Match[str]) -> str:
        word = match["w"]
        spoken = ordinal(int(match["y"]), "ru", case=cases[word])
        return f"{spoken} {'года' if word == 'г.' else word}"

    return re.sub(r"\b(?P<y>\d{4}) ?(?P<w>году|года|год|г\.)(?!\w)", russian, text)


def _list_markers(text: str, language: str) -> str:
    """ "1. First item" -> "one: First item": the number of a list item, then its text."""
    colon = {"zh": "：", "ja": "："}.get(language, ":")
    return re.sub(
        r"^([ \t]*)(\d{1,2})[.)][ \t]+(?=\S)",
        lambda m: f"{m.group(1)}{cardinal(int(m.group(2)), language)}{colon} ",
        text,
        flags=re.MULTILINE,
    )


def _numbers(text: str, language: str) -> str:
    def say(match: re.Match[str]) -> str:
        words = _say_number(match["num"], language)
        if match["noun"] and re.fullmatch(r"[1-9]\d*", match["num"]):
            noun = re.match(r"\w+", match.string[match.end() - 1 :])
            words = _agreeing(words, int(match["num"]), noun.group(0) if noun else "", language)
        words = _sign(match, language) + words if match["sign"] else words
        if language not in UNSPACED:  # "MP3", "10k": a number glued to letters is a word of its own
            before = match.string[match.start() - 1 : match.start()]
            after = match.string[match.end("num") : match.end("num") + 1]
            words = (
                (" " if _ALPHABETIC.match(before) else "") + words + (" " if _ALPHABETIC.match(after) else "")
            )
        noun_start = match["noun"] or ""
        return words + (noun_start.lstrip() if words.endswith("'") else noun_start)  # un'ora

    return re.sub(rf"{_SIGN}(?P<num>{NUMBER_PATTERN[language]})(?P<noun>\s[^\W\d_])?", say, text)


_ALPHABETIC = re.compile(r"[A-Za-z\u00c0-\u024f\u0400-\u04ff]")
_GERMAN_FEMININE_ENDINGS = ("e", "ung", "heit", "keit", "schaft", "ion", "tät", "ei", "ik", "ur", "in")
_ROMANCE_FEMININE_ENDINGS = (
    "a",
    "as",
    "ción",
    "ciones",
    "ção",
    "ções",
    "dad",
    "dades",
    "dade",
    "tud",
    "gem",
    "gens",
)
_ROMANCE_MASCULINE_IN_A = {"día", "días", "dia", "dias", "mapa", "mapas", "problema", "problemas", "programa"}
_ROMANCE_MASCULINE_IN_A.update({"programas", "programma", "sistema", "sistemas", "tema", "temas", "idioma"})
_ROMANCE_MASCULINE_IN_A.update({"idiomas", "clima", "planeta", "planetas", "pijama", "poeta"})


def _agreeing(words: str, number: int, noun: str, language: str) -> str:
    """A whole number before a noun takes the noun's gender, guessed from its ending (num2words cannot).

    ein/eine Flasche, un/una hora, veintiún años, quinientas personas, duas pessoas, un'ora,
    одна лампа, две книги. Unknown nouns keep the masculine form num2words gives.
    """
    lowered = noun.lower()
    romance_feminine = lowered.endswith(_ROMANCE_FEMININE_ENDINGS) and lowered not in _ROMANCE_MASCULINE_IN_A
    if language == "de" and words == "eins" and noun[:1].isupper():
        return _german_one(noun)
    if language == "es":
        if romance_feminine:
            return re.sub(r"uno$", "una", words.replace("ientos", "ientas"))
        if words.endswith("uno"):
            return words[:-3] + ("ún" if words.endswith("iuno") else "un")  # veintiún años, treinta y un días
    if language == "pt" and romance_feminine:
        words = re.sub(r"(\w)entos\b", r"\1entas", words)
        return re.sub(r"\b(um|dois)$", lambda m: "uma" if m.group(1) == "um" else "duas", words)
    if language == "it" and words == "uno":
        if romance_feminine:
            return "un'" if lowered[:1] in "aeiou" else "una"
        return "uno" if re.match(r"s[^aeiou]|z|gn|ps|x", lowered) else "un"
    if language == "ru" and not 11 <= number % 100 <= 14:
        if number % 10 == 1 and lowered.endswith(("а", "я")):
            return re.sub(r"один$", "одна", words)
        if number % 10 == 1 and lowered.endswith(("о", "е", "ё")):
            return re.sub(r"один$", "одно", words)
        if number % 10 == 2 and lowered.endswith(("ы", "и")):
            return re.sub(r"два$", "две", words)
    return words


def _german_one(rest: str) -> str:
    """ "1 Liter" -> "ein", "1 Flasche" -> "eine": guessed from the noun's ending, as num2words cannot."""
    noun = re.match(r"\w+", rest)
    return "eine" if noun and noun.group(0).endswith(_GERMAN_FEMININE_ENDINGS) else "ein"


def _symbols(text: str, language: str) -> str:
    if language in AND:
        text = re.sub(r"(?<=\s)&(?=\s)", AND[language], text)
    return text


_RULES: tuple[Rule, ...] = (
    _abbreviations,
    _dates,
    _phones,
    _ranges,
    _times,
    _money,
    _percentages,
    _temperatures,
    _russian_years,
    _units,
    _ordinals,
    _years,
    _list_markers,
    _numbers,
    _symbols,
)

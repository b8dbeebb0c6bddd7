"""SSML requests (Wyoming `text_format` "ssml"): a documented subset read into text and pauses.

Qwen3-TTS reads plain text only, so an SSML document is turned into segments: each is text
to synthesize followed by a pause the server fills with silence, because a model cannot be
told through text to stay quiet for 500 ms. <p> and <s> end sentences; <say-as> spells out
letters and digits, or reads numbers, ordinals, dates and phone numbers, in the language
in scope (the number words come from numbers.py and normalize.py); <sub> speaks its alias.
Elements that only colour the voice (<emphasis>, <prosody> including its rate, <voice>,
<lang>, <phoneme>) keep their text and lose the tag; <audio> speaks its fallback content,
<mark> and <desc> say nothing. No tag is ever left in the text.

A document that is not well-formed XML, whose root is not <speak>, that declares a DOCTYPE
or entities (the stdlib parser would expand them: "billion laughs"), that is too long or
too deeply nested, or that has a <break> it cannot read is refused with an SsmlError whose
message says what is wrong and where, for the server to send back as an error event.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field

from ..languages import AUTO

# The normaliser's own readers of dates, phone digit groups and written numbers, so both read alike.
from .normalize import (
    NUMBER_PATTERN,
    normalize,
    parse_number,
    resolve_language,
    spoken_date,
    spoken_phone_group,
)
from .numbers import UNSPACED, cardinal, decimal, digits, ordinal
from .words import PLUS

MAX_SSML_CHARS = 100_000
MAX_DEPTH = 100
MAX_BREAK_MS = 10_000
# SSML leaves strengths to the engine; these are the usual lengths of a comma, sentence and paragraph.
BREAK_STRENGTH_MS = {"none": 0, "x-weak": 100, "weak": 250, "medium": 500, "strong": 750, "x-strong": 1000}

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_DECLARATION = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)\s*", re.IGNORECASE)
# Elements that end a sentence; "paragraph" and "sentence" are the long names some engines accept.
_BLOCKS = {"p", "s", "paragraph", "sentence"}
# Elements that keep their text and lose the tag: they change how a voice sounds, not what it says.
_TRANSPARENT = {"emphasis", "prosody", "voice", "lang", "phoneme", "w", "token", "audio", "speak"}
# Elements whose content is never spoken.
_SILENT = {"mark", "desc", "meta", "metadata", "lexicon"}


class SsmlError(ValueError):
    """An SSML document this server will not speak; the message names the problem."""


@dataclass(frozen=True)
class SsmlSegment:
    """Text to synthesize (may be empty), then pause_ms of silence."""

    text: str
    pause_ms: int = 0


@dataclass(frozen=True)
class _SayAs:
    interpret_as: str
    format: str
    text: str
    language: str | None


@dataclass(frozen=True)
class _Pause:
    milliseconds: int


class _Boundary:
    """The end of a <p> or <s>: what follows is a new sentence."""


_BOUNDARY = _Boundary()
_Item = str | _SayAs | _Pause | _Boundary


@dataclass(frozen=True)
class SsmlDocument:
    """A checked SSML document: its xml:lang, the elements it ignored, and what it says.

    parse_ssml() does every check, so segments() cannot fail: the server can resolve the
    request's language (using `language` when the request names none) before rendering.
    """

    language: str | None  # xml:lang of <speak> as written ("en-US"), None when absent
    ignored: tuple[str, ...]  # names of unknown elements whose tags were dropped, for the log
    _items: tuple[_Item, ...] = field(repr=False)

    def segments(self, language: str | None = AUTO) -> list[SsmlSegment]:
        """The text and pauses to speak, in order; say-as is read in the xml:lang in scope, else language."""
        guessed_from = " ".join(item for item in self._items if isinstance(item, str))
        segments: list[SsmlSegment] = []
        pieces: list[str] = []

        def flush(pause_ms: int) -> None:
            text = _tidy("".join(pieces))
            pieces.clear()
            if text or not segments:
                segments.append(SsmlSegment(text, pause_ms))
            else:  # a pause after a pause: they add up
                last = segments[-1]
                segments[-1] = SsmlSegment(last.text, last.pause_ms + pause_ms)

        for item in self._items:
            if isinstance(item, str):
                pieces.append(item)
            elif isinstance(item, _SayAs):
                code = resolve_language(item.language or language, guessed_from)
                try:
                    words = say_as(item.interpret_as, item.text, code, item.format)
                except Exception:  # num2words refusing odd input must not cost the request its audio
                    words = item.text
                pad = "" if code in UNSPACED else " "
                pieces.append(pad + words + pad)
            elif isinstance(item, _Pause):
                flush(item.milliseconds)
            elif _tidy("".join(pieces)):
                flush(0)
            else:
                pieces.clear()
        if _tidy("".join(pieces)):
            flush(0)
        return segments


def parse_ssml(document: str, max_chars: int = MAX_SSML_CHARS) -> SsmlDocument:
    """Check an SSML document and read it; raise SsmlError naming what is wrong."""
    if len(document) > max_chars:
        raise SsmlError(f"SSML document is longer than {max_chars} characters")
    if _DECLARATION.search(document):
        raise SsmlError("SSML with a DOCTYPE or ENTITY declaration is not accepted")
    if not document.strip():
        raise SsmlError("SSML document is empty")
    if not document.lstrip().startswith("<"):
        raise SsmlError("SSML must be an XML document with <speak> as its root element")
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as err:
        line, column = err.position
        reason = str(err).split(":")[0]
        raise SsmlError(
            f"SSML is not well-formed XML: {reason} at line {line}, column {column + 1}"
        ) from None
    if _name(root) != "speak":
        raise SsmlError(f"SSML must have <speak> as its root element, not <{_name(root)}>")
    items: list[_Item] = []
    ignored: list[str] = []
    _read_children(root, _language_of(root), items, ignored, depth=1)
    return SsmlDocument(_language_of(root), tuple(dict.fromkeys(ignored)), tuple(items))


def say_as(interpret_as: str, text: str, language: str, format: str = "") -> str:
    """<say-as> content in words; what it cannot read it leaves to the normaliser, as written."""
    kind = interpret_as.strip().lower()
    text = text.strip()
    if kind in ("characters", "spell-out", "letters", "verbatim"):
        return _spell(text, language)
    if kind in ("digits", "number_digit", "digit"):
        return _digit_by_digit(text, language)
    if kind in ("telephone", "phone"):
        return _telephone(text, language) or text
    if kind in ("cardinal", "number"):
        return _cardinal(text, language) or normalize(text, language)
    if kind == "ordinal":
        return _ordinal(text, language) or text
    if kind == "date":
        return _say_date(text, format.strip().lower(), language) or text
    return text


# -- reading the tree -------------------------------------------------------------------


def _read_children(
    element: ElementTree.Element, language: str | None, items: list[_Item], ignored: list[str], depth: int
) -> None:
    if element.text:
        items.append(element.text)
    for child in element:
        _read(child, language, items, ignored, depth + 1)
        if child.tail:
            items.append(child.tail)


def _read(
    element: ElementTree.Element, language: str | None, items: list[_Item], ignored: list[str], depth: int
) -> None:
    if depth > MAX_DEPTH:
        raise SsmlError(f"SSML elements are nested more than {MAX_DEPTH} deep")
    name = _name(element)
    language = _language_of(element) or language
    if name == "break":
        items.append(_Pause(_break_ms(element)))
    elif name == "say-as":
        interpret_as = element.get("interpret-as", "")
        items.append(_SayAs(interpret_as, element.get("format", ""), "".join(element.itertext()), language))
    elif name == "sub" and element.get("alias") is not None:
        items.append(element.get("alias", ""))
    elif name in _SILENT:
        pass
    elif name in _BLOCKS:
        items.append(_BOUNDARY)
        _read_children(element, language, items, ignored, depth)
        items.append(_BOUNDARY)
    else:
        if name not in _TRANSPARENT and name != "sub":
            ignored.append(name)
        _read_children(element, language, items, ignored, depth)


def _name(element: ElementTree.Element) -> str:
    """The tag without its namespace: "{http://www.w3.org/2001/10/synthesis}speak" -> "speak"."""
    return str(element.tag).rsplit("}", 1)[-1]


def _language_of(element: ElementTree.Element) -> str | None:
    value = element.get(_XML_LANG) or element.get("lang")
    return value.strip() if value and value.strip() else None


def _break_ms(element: ElementTree.Element) -> int:
    """<break time="500ms"> or strength="strong" (time wins); no attributes is a medium break."""
    time = element.get("time")
    if time is not None:
        match = _DURATION.fullmatch(time)
        if match is None:
            raise SsmlError(f'<break time="{time}">: give a duration such as "500ms" or "1.5s"')
        amount = float(match.group(1)) * (1 if match.group(2).lower() == "ms" else 1000)
        return min(round(amount), MAX_BREAK_MS)
    strength = element.get("strength", "medium").strip().lower()
    if strength not in BREAK_STRENGTH_MS:
        raise SsmlError(f'<break strength="{strength}">: use one of {", ".join(BREAK_STRENGTH_MS)}')
    return BREAK_STRENGTH_MS[strength]


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    return re.sub(r" +([,.!?;:。、，！？])", r"\1", text).strip()


# -- say-as ---------------------------------------------------------------------------------


def _spell(text: str, language: str) -> str:
    """ "AB 12" -> "A B, one two": letters as capitals, digits as words, one by one; marks are dropped."""
    words = []
    for word in text.split():
        spelled = []
        for char in word:
            if char.isdigit() and char.isascii():
                spelled.append(digits(char, language))
            elif char.isalpha():
                upper = char.upper()
                spelled.append(upper if len(upper) == 1 else char)  # "ß" has no capital of its own
        if spelled:
            words.append(" ".join(spelled))
    return ("、" if language in UNSPACED else ", ").join(words)


def _digit_by_digit(text: str, language: str) -> str:
    """ "12 34" -> "one two, three four": each digit a word, each group of digits a phrase."""
    groups = re.findall(r"[0-9]+|[^\W\d_]+", text)
    separator = "、" if language in UNSPACED else ", "
    return separator.join(digits(group, language) if group.isdigit() else group for group in groups)


def _telephone(text: str, language: str) -> str | None:
    """ "+49 170 1234" -> "plus, vier neun, eins sieben null, ...": groups read as the normaliser does."""
    groups = re.findall(r"[0-9]+", text)
    if not groups:
        return None
    separator = {"zh": "，", "ja": "、"}.get(language, ", ")
    spoken = [spoken_phone_group(group, language) for group in groups]
    if text.startswith("+") and language in PLUS:
        spoken.insert(0, PLUS[language])
    return separator.join(spoken)


def _cardinal(text: str, language: str) -> str | None:
    """ "1,234" (en), "1.234" (de), "-3,5" (de), "0170" -> the number as an amount, never digit by digit."""
    match = re.fullmatch(rf"([-−]?)({NUMBER_PATTERN[language]})", text)
    if match is None:
        return None
    whole, fraction = parse_number(match.group(2), language)
    if fraction is None:
        return cardinal(-whole if match.group(1) else whole, language)
    return None if match.group(1) else decimal(whole, fraction, language)  # "-3,5": the normaliser's


def _ordinal(text: str, language: str) -> str | None:
    """ "3", "3.", "3rd", "3e", "3º", "3-й" -> the ordinal word (masculine, nominative)."""
    match = re.fullmatch(r"(\d+)(?:\.|st|nd|rd|th|er|re|e|ème|º|ª|°|-?[а-я]+)?", text, re.IGNORECASE)
    return None if match is None else ordinal(int(match.group(1)), language)


# Date field orders SSML engines accept in format="..."; the default depends on the text and language.
_DATE_ORDERS = {"dmy", "mdy", "ymd", "dm", "md"}


def _say_date(text: str, format: str, language: str) -> str | None:
    """ "03.05.2024" with format "dmy" -> "dritten Mai zweitausendvierundzwanzig"."""
    numbers = re.findall(r"\d+", text)
    order = format if format in _DATE_ORDERS else ""
    if not order:
        if len(numbers) == 3:
            order = "ymd" if len(numbers[0]) == 4 else ("mdy" if language == "en" else "dmy")
        elif len(numbers) == 2:
            order = "md" if language == "en" else "dm"
    if not order or len(numbers) != len(order):
        return None
    fields = dict(zip(order, numbers, strict=True))
    day, month = int(fields["d"]), int(fields["m"])
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return None
    return spoken_date(day, month, fields.get("y"), language, before="")

"""SSML read into text and pauses: each element, nesting, entities, say-as in en and de, refusals."""

from __future__ import annotations

import re

import pytest

from wyoming_qwen3tts.text.ssml import MAX_BREAK_MS, SsmlError, SsmlSegment, parse_ssml, say_as

NS = 'xmlns="http://www.w3.org/2001/10/synthesis"'


def spoken(document: str, language: str = "en") -> list[tuple[str, int]]:
    return [(segment.text, segment.pause_ms) for segment in parse_ssml(document).segments(language)]


# (document, language, expected segments as (text, pause_ms))
CASES = [
    # <speak> alone, with the standard namespace and an XML declaration
    ("<speak>Hello world.</speak>", "en", [("Hello world.", 0)]),
    (f'<?xml version="1.0"?>\n<speak version="1.0" {NS}>Hi there.</speak>', "en", [("Hi there.", 0)]),
    ("<speak>  Lots \n\t of   space  </speak>", "en", [("Lots of space", 0)]),
    ("<speak></speak>", "en", []),
    # <p> and <s> end sentences, with or without punctuation
    ("<speak><s>One</s><s>Two</s></speak>", "en", [("One", 0), ("Two", 0)]),
    ("<speak><p>First para.</p><p>Second para.</p></speak>", "en", [("First para.", 0), ("Second para.", 0)]),
    (
        "<speak>Intro <p><s>A</s><s>B</s></p> outro</speak>",
        "en",
        [("Intro", 0), ("A", 0), ("B", 0), ("outro", 0)],
    ),
    # <break>: time in ms or s, strengths, the default, and pauses that add up or lead
    ('<speak>Wait <break time="500ms"/> now.</speak>', "en", [("Wait", 500), ("now.", 0)]),
    ('<speak>Wait<break time="1.5s"/>now.</speak>', "en", [("Wait", 1500), ("now.", 0)]),
    ('<speak>Wait <break time=" 2 S "/> now.</speak>', "en", [("Wait", 2000), ("now.", 0)]),
    ('<speak>A <break strength="weak"/> B</speak>', "en", [("A", 250), ("B", 0)]),
    ('<speak>A <break strength="x-strong"/> B</speak>', "en", [("A", 1000), ("B", 0)]),
    ('<speak>A <break strength="none"/> B</speak>', "en", [("A", 0), ("B", 0)]),
    ("<speak>A <break/> B</speak>", "en", [("A", 500), ("B", 0)]),
    ('<speak>A <break time="300ms" strength="x-strong"/> B</speak>', "en", [("A", 300), ("B", 0)]),
    ('<speak>A <break time="1s"/><break time="250ms"/> B</speak>', "en", [("A", 1250), ("B", 0)]),
    ('<speak><break time="400ms"/>Late start.</speak>', "en", [("", 400), ("Late start.", 0)]),
    ('<speak>End.<break time="1s"/></speak>', "en", [("End.", 1000)]),
    ('<speak>Long <break time="60s"/> wait</speak>', "en", [("Long", MAX_BREAK_MS), ("wait", 0)]),
    ('<speak><s>One<break time="200ms"/></s><s>Two</s></speak>', "en", [("One", 200), ("Two", 0)]),
    # <sub> speaks its alias, or its text when it has none
    (
        '<speak><sub alias="World Health Organization">WHO</sub> said so.</speak>',
        "en",
        [("World Health Organization said so.", 0)],
    ),
    ("<speak><sub>plain</sub> text</speak>", "en", [("plain text", 0)]),
    # voice colouring keeps the text: emphasis, prosody (rate too), voice, lang, phoneme, w
    (
        '<speak>I <emphasis level="strong">really</emphasis> mean it.</speak>',
        "en",
        [("I really mean it.", 0)],
    ),
    ('<speak><prosody rate="slow" pitch="+2st">Slowly</prosody> now.</speak>', "en", [("Slowly now.", 0)]),
    ('<speak><voice name="serena">Hi</voice> there.</speak>', "en", [("Hi there.", 0)]),
    ('<speak>Say <lang xml:lang="fr-FR">bonjour</lang>.</speak>', "en", [("Say bonjour.", 0)]),
    ('<speak>A <phoneme alphabet="ipa" ph="təˈmɑːtəʊ">tomato</phoneme>.</speak>', "en", [("A tomato.", 0)]),
    ("<speak><w>word</w> by <token>word</token></speak>", "en", [("word by word", 0)]),
    # words split across inline tags stay one word
    ("<speak>Hel<emphasis>lo</emphasis>!</speak>", "en", [("Hello!", 0)]),
    # <audio> speaks its fallback content only; <desc> and <mark> say nothing
    ('<speak><audio src="bell.mp3"><desc>a bell</desc>Ding dong</audio>.</speak>', "en", [("Ding dong.", 0)]),
    ('<speak><audio src="bell.mp3"/>Next.</speak>', "en", [("Next.", 0)]),
    ('<speak>Go <mark name="here"/>on.</speak>', "en", [("Go on.", 0)]),
    # unknown elements keep their text
    ("<speak><foo>bar</foo> baz</speak>", "en", [("bar baz", 0)]),
    # nesting
    (
        '<speak><p><prosody rate="fast"><emphasis>Very <sub alias="quickly">qk</sub></emphasis></prosody>'
        '<break time="100ms"/><s>Then <voice name="x"><lang xml:lang="en">calm</lang></voice>.</s></p>'
        "</speak>",
        "en",
        [("Very quickly", 100), ("Then calm.", 0)],
    ),
    # entities and character references are text
    ("<speak>Tom &amp; Jerry</speak>", "en", [("Tom & Jerry", 0)]),
    ("<speak>3 &lt; 5 &gt; 2</speak>", "en", [("3 < 5 > 2", 0)]),
    ("<speak>&quot;Hi&quot; &apos;there&apos;</speak>", "en", [("\"Hi\" 'there'", 0)]),
    ("<speak>Caf&#233; costs 5&#x20AC;</speak>", "en", [("Café costs 5€", 0)]),
    ("<speak><![CDATA[a <b> c]]></speak>", "en", [("a <b> c", 0)]),
    # comments and processing instructions are not spoken
    ("<speak>One <!-- not this --> two<?pi nothing?></speak>", "en", [("One two", 0)]),
    # say-as, en
    ('<speak>Code <say-as interpret-as="characters">abc</say-as>.</speak>', "en", [("Code A B C.", 0)]),
    ('<speak><say-as interpret-as="spell-out">R2D2</say-as></speak>', "en", [("R two D two", 0)]),
    ('<speak><say-as interpret-as="characters">AB 12</say-as></speak>', "en", [("A B, one two", 0)]),
    (
        '<speak>PIN <say-as interpret-as="digits">0170</say-as></speak>',
        "en",
        [("PIN zero one seven zero", 0)],
    ),
    (
        '<speak><say-as interpret-as="cardinal">1,234</say-as></speak>',
        "en",
        [("one thousand two hundred and thirty-four", 0)],
    ),
    ('<speak><say-as interpret-as="cardinal">0170</say-as></speak>', "en", [("one hundred and seventy", 0)]),
    ('<speak><say-as interpret-as="ordinal">21</say-as></speak>', "en", [("twenty-first", 0)]),
    ('<speak><say-as interpret-as="ordinal">3rd</say-as></speak>', "en", [("third", 0)]),
    (
        '<speak><say-as interpret-as="date" format="mdy">05/03/2024</say-as></speak>',
        "en",
        [("May third, twenty twenty-four", 0)],
    ),
    (
        '<speak><say-as interpret-as="date" format="dmy">05/03/2024</say-as></speak>',
        "en",
        [("March fifth, twenty twenty-four", 0)],
    ),
    (
        '<speak><say-as interpret-as="date">2024-05-03</say-as></speak>',
        "en",
        [("May third, twenty twenty-four", 0)],
    ),
    (
        '<speak>Call <say-as interpret-as="telephone">+1 555 0123</say-as>.</speak>',
        "en",
        [("Call plus, one, five five five, zero one two three.", 0)],
    ),
    # say-as, de
    ('<speak><say-as interpret-as="characters">abc</say-as></speak>', "de", [("A B C", 0)]),
    ('<speak><say-as interpret-as="digits">0170</say-as></speak>', "de", [("null eins sieben null", 0)]),
    (
        '<speak><say-as interpret-as="cardinal">1.234</say-as></speak>',
        "de",
        [("eintausendzweihundertvierunddreißig", 0)],
    ),
    ('<speak><say-as interpret-as="cardinal">3,5</say-as></speak>', "de", [("drei Komma fünf", 0)]),
    ('<speak><say-as interpret-as="ordinal">3.</say-as></speak>', "de", [("dritte", 0)]),
    (
        '<speak>Am <say-as interpret-as="date">03.05.2024</say-as>.</speak>',
        "de",
        [("Am dritten Mai zweitausendvierundzwanzig.", 0)],
    ),
    (
        '<speak><say-as interpret-as="telephone">0170 1234</say-as></speak>',
        "de",
        [("null eins sieben null, eins zwei drei vier", 0)],
    ),
    # say-as types it does not know keep their text, for the normaliser
    ('<speak><say-as interpret-as="unit">5 km</say-as></speak>', "en", [("5 km", 0)]),
    ('<speak><say-as interpret-as="date">soon</say-as></speak>', "en", [("soon", 0)]),
]


@pytest.mark.parametrize(("document", "language", "expected"), CASES)
def test_documents_become_text_and_pauses(
    document: str, language: str, expected: list[tuple[str, int]]
) -> None:
    assert spoken(document, language) == expected


# The language say-as is read in: the xml:lang in scope beats the server's language, which beats a guess.
LANGUAGE_CASES = [
    ('<speak xml:lang="de-DE"><say-as interpret-as="digits">12</say-as></speak>', "en", "eins zwei"),
    (
        '<speak xml:lang="de"><lang xml:lang="en-US"><say-as interpret-as="digits">12</say-as></lang>'
        "</speak>",
        "de",
        "one two",
    ),
    (
        '<speak><voice xml:lang="de"><say-as interpret-as="digits">12</say-as></voice></speak>',
        "en",
        "eins zwei",
    ),
    ('<speak><say-as xml:lang="de" interpret-as="digits">12</say-as></speak>', "en", "eins zwei"),
    ('<speak><say-as interpret-as="digits">12</say-as></speak>', "german", "eins zwei"),
    ('<speak><say-as interpret-as="digits">12</say-as></speak>', "de-AT", "eins zwei"),
    (
        '<speak>Das ist die Nummer und sie ist <say-as interpret-as="digits">12</say-as></speak>',
        "auto",
        "Das ist die Nummer und sie ist eins zwei",
    ),
    ('<speak><say-as interpret-as="digits">12</say-as></speak>', "auto", "one two"),
]


@pytest.mark.parametrize(("document", "language", "expected"), LANGUAGE_CASES)
def test_say_as_reads_in_the_language_in_scope(document: str, language: str, expected: str) -> None:
    assert spoken(document, language) == [(expected, 0)]


@pytest.mark.parametrize(
    ("document", "language"),
    [
        ('<speak xml:lang="en-US">Hi</speak>', "en-US"),
        (f'<speak version="1.0" {NS} xml:lang="de">Hi</speak>', "de"),
        ('<speak lang="fr">Salut</speak>', "fr"),
        ("<speak>Hi</speak>", None),
        ('<speak xml:lang="  ">Hi</speak>', None),
    ],
)
def test_the_document_language_is_returned_for_the_request(document: str, language: str | None) -> None:
    assert parse_ssml(document).language == language


def test_unknown_elements_are_reported_once_for_the_log() -> None:
    document = "<speak><foo>a</foo><bar>b</bar><foo>c</foo><emphasis>d</emphasis></speak>"
    assert parse_ssml(document).ignored == ("foo", "bar")
    assert parse_ssml("<speak><p>known</p></speak>").ignored == ()


def test_segments_are_plain_dataclasses() -> None:
    segments = parse_ssml('<speak>Hi<break time="1s"/></speak>').segments("en")
    assert segments == [SsmlSegment("Hi", 1000)]


# (document, words the error message must contain)
REFUSALS = [
    ("", ["empty"]),
    ("   \n", ["empty"]),
    ("Just plain text.", ["XML document", "<speak>"]),
    ("<speak>Unclosed", ["not well-formed", "line 1", "column 16"]),
    ("<speak>\n  <p>Hi</s>\n</speak>", ["not well-formed", "mismatched tag", "line 2", "column 10"]),
    ("<speak>Hi</speak><speak>again</speak>", ["not well-formed", "junk after document element"]),
    ("<speak>Tom & Jerry</speak>", ["not well-formed", "invalid token", "line 1", "column 13"]),
    ("<speak>Caf&eacute;</speak>", ["undefined entity", "line 1", "column 11"]),
    ("<speak><amazon:effect>x</amazon:effect></speak>", ["not well-formed", "unbound prefix"]),
    ("<p>Not speak</p>", ["<speak>", "root", "not <p>"]),
    (f"<html {NS}>x</html>", ["not <html>"]),
    ('<speak>A <break time="fast"/></speak>', ['time="fast"', "500ms"]),
    ('<speak>A <break time="-1s"/></speak>', ['time="-1s"']),
    ('<speak>A <break time="5"/></speak>', ['time="5"']),
    ('<speak>A <break strength="huge"/></speak>', ['strength="huge"', "x-strong"]),
]


@pytest.mark.parametrize(("document", "words"), REFUSALS)
def test_bad_documents_are_refused_with_a_clear_message(document: str, words: list[str]) -> None:
    with pytest.raises(SsmlError) as raised:
        parse_ssml(document)
    for word in words:
        assert word in str(raised.value)


def test_ssml_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_ssml("<nope/>")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE speak [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<speak>&lol3;</speak>"""


@pytest.mark.parametrize(
    "document",
    [
        BILLION_LAUGHS,
        '<!DOCTYPE speak SYSTEM "http://example.com/speak.dtd"><speak>x</speak>',
        "<!doctype speak><speak>x</speak>",
        '<speak><!ENTITY x "y"></speak>',
    ],
)
def test_doctype_and_entity_declarations_are_refused(document: str) -> None:
    with pytest.raises(SsmlError, match="DOCTYPE or ENTITY"):
        parse_ssml(document)


def test_long_documents_are_refused() -> None:
    document = "<speak>" + "word " * 30 + "</speak>"
    assert spoken(document)  # within the default limit
    with pytest.raises(SsmlError, match="longer than 100 characters"):
        parse_ssml(document, max_chars=100)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    document = "<speak>" + "<emphasis>" * 2000 + "x" + "</emphasis>" * 2000 + "</speak>"
    with pytest.raises(SsmlError, match="nested more than"):
        parse_ssml(document)
    shallow = "<speak>" + "<emphasis>" * 50 + "x" + "</emphasis>" * 50 + "</speak>"
    assert spoken(shallow) == [("x", 0)]


# "&lt;" and CDATA put a "<" in the text on purpose; no other document may leave one.
TAGLESS_CASES = [case for case in CASES if "&lt;" not in case[0] and "CDATA" not in case[0]]


@pytest.mark.parametrize(("document", "language", "expected"), TAGLESS_CASES)
def test_no_tag_is_ever_spoken(document: str, language: str, expected: list[tuple[str, int]]) -> None:
    for segment in parse_ssml(document).segments(language):
        assert "<" not in segment.text and ">" not in segment.text


def test_no_tag_is_spoken_from_a_document_using_every_element() -> None:
    document = (
        f'<speak version="1.0" {NS} xml:lang="en-US"><metadata><dc>meta</dc></metadata>'
        '<p><s>A <emphasis>b</emphasis> <prosody rate="x-slow">c</prosody></s>'
        '<s><voice name="v"><lang xml:lang="de">d</lang></voice> <phoneme ph="x">e</phoneme></s></p>'
        '<break/><say-as interpret-as="characters">fg</say-as> <sub alias="h">H2</sub> '
        '<audio src="a.wav"><desc>no</desc>i</audio><mark name="m"/> <unknown attr="1">j</unknown>'
        '<lexicon uri="x"/><paragraph><sentence>k</sentence></paragraph></speak>'
    )
    segments = parse_ssml(document).segments("en")
    assert segments == [
        SsmlSegment("A b c", 0),
        SsmlSegment("d e", 500),
        SsmlSegment("F G h i j", 0),
        SsmlSegment("k", 0),
    ]
    assert all(_TAG.search(segment.text) is None for segment in segments)


_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


@pytest.mark.parametrize(
    ("interpret_as", "text", "language", "expected"),
    [
        ("characters", "iPhone", "en", "I P H O N E"),
        ("spell-out", "Straße", "de", "S T R A ß E"),  # ß has no one-letter capital
        ("characters", "a-b.c", "en", "A B C"),  # marks are dropped
        ("digits", "12 34", "en", "one two, three four"),
        ("digits", "12 34", "de", "eins zwei, drei vier"),
        ("cardinal", "-12", "de", "minus zwölf"),
        ("cardinal", "1.234", "en", "one point two three four"),  # a decimal point in English
        ("cardinal", "12.5", "en", "twelve point five"),
        ("ordinal", "1", "de", "erste"),
        ("ordinal", "first", "en", "first"),  # not a number: left as written
        ("date", "3.5.", "de", "dritten Mai"),
        ("date", "5/3", "en", "May third"),
        ("date", "31/13/2024", "en", "31/13/2024"),  # no such month: left as written
        (
            "telephone",
            "+49 170 1234567",
            "de",
            "plus, vier neun, eins sieben null, eins zwei drei vier fünf sechs sieben",
        ),
        ("telephone", "no digits", "en", "no digits"),
        ("interjection", "wow", "en", "wow"),
    ],
)
def test_say_as(interpret_as: str, text: str, language: str, expected: str) -> None:
    assert say_as(interpret_as, text, language) == expected

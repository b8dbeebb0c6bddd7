"""The server normalises each sentence, in the request's resolved language, right before synthesis."""

from __future__ import annotations

from test_handler import FakeEngine, assert_one_response, speak, start_server  # noqa: F401
from wyoming.tts import SynthesizeVoice


async def test_sentences_are_normalised_in_the_voice_language(start_server) -> None:  # noqa: F811
    server = await start_server()
    client = await server.client()

    events = await speak(
        client, "Am 3. Mai kostet es 12,50 €. Das ist **gut** 👍", SynthesizeVoice(name="narrator")
    )

    assert_one_response(events)
    assert server.engine.requests == [
        ("Am dritten Mai kostet es zwölf Euro fünfzig.", "narrator", "german"),
        ("Das ist gut", "narrator", "german"),
    ]


async def test_a_requested_language_decides_how_numbers_are_read(start_server) -> None:  # noqa: F811
    server = await start_server()
    client = await server.client()

    await speak(client, "It is 21 °C.", SynthesizeVoice(name="Ryan"))
    await speak(client, "Es ist 21 °C.", SynthesizeVoice(name="Vivian", language="de"))

    assert [text for text, _, _ in server.engine.requests] == [
        "It is twenty-one degrees Celsius.",
        "Es ist einundzwanzig Grad Celsius.",
    ]


async def test_a_sentence_of_only_emoji_is_not_synthesized(start_server) -> None:  # noqa: F811
    server = await start_server()
    client = await server.client()

    events = await speak(client, "Done. 👍🎉", SynthesizeVoice(name="Ryan"))

    assert_one_response(events)
    assert [text for text, _, _ in server.engine.requests] == ["Done."]


async def test_normalising_can_be_turned_off(start_server) -> None:  # noqa: F811
    server = await start_server(normalize=False)
    client = await server.client()

    await speak(client, "It is 21 °C.", SynthesizeVoice(name="Ryan"))

    assert [text for text, _, _ in server.engine.requests] == ["It is 21 °C."]

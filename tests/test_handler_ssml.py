"""text_format "ssml" through the handler: spoken text without tags, breaks as real silence."""

from __future__ import annotations

from test_handler import (  # noqa: F401
    FakeEngine,
    assert_one_response,
    audio_of,
    expected_pcm,
    read_until,
    read_until_closed,
    start_server,
    types,
)
from wyoming.error import Error
from wyoming.event import Event
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

SAMPLE_RATE = 24000
DOCUMENT = (
    '<speak>Hello <emphasis>there</emphasis>.<break time="250ms"/>'
    'Call <say-as interpret-as="digits">42</say-as>.</speak>'
)


def silence(milliseconds: int) -> bytes:
    return bytes(SAMPLE_RATE * milliseconds // 1000 * 2)


async def test_one_shot_ssml_is_spoken_without_tags_and_breaks_are_silence(start_server) -> None:  # noqa: F811
    server = await start_server()
    client = await server.client()

    await client.write_event(
        Synthesize(text=DOCUMENT, voice=SynthesizeVoice(name="Ryan"), text_format="ssml").event()
    )
    events = await read_until(client, "audio-stop")

    assert_one_response(events)
    spoken = [text for text, _, _ in server.engine.requests]
    assert spoken == ["Hello there.", "Call four two."]
    assert audio_of(events) == expected_pcm(spoken[0]) + silence(250) + expected_pcm(spoken[1])


async def test_streamed_ssml_is_read_whole_at_stop_in_its_xml_lang(start_server) -> None:  # noqa: F811
    server = await start_server()
    client = await server.client()

    await client.write_event(
        SynthesizeStart(voice=SynthesizeVoice(name="Vivian"), text_format="ssml").event()
    )
    for piece in (
        '<speak xml:lang="de-DE">Es ist <say-as interpret-as="cardinal">',
        "21</say-as> Uhr.</speak>",
    ):
        await client.write_event(SynthesizeChunk(text=piece).event())
    await client.write_event(Synthesize(text="ignored echo", text_format="ssml").event())
    await client.write_event(SynthesizeStop().event())
    events = await read_until(client, "synthesize-stopped")

    assert types(events)[-2:] == ["audio-stop", "synthesize-stopped"]
    assert server.engine.requests == [("Es ist einundzwanzig Uhr.", "Vivian", "german")]


async def test_a_requested_language_wins_over_xml_lang(start_server) -> None:  # noqa: F811
    server = await start_server()
    client = await server.client()

    # Raw event: wyoming's SynthesizeVoice leaves the language out when a name is given.
    data = {"text": '<speak xml:lang="de">Hi.</speak>', "text_format": "ssml"}
    await client.write_event(Event("synthesize", {**data, "voice": {"name": "Vivian", "language": "zh"}}))
    await read_until(client, "audio-stop")

    assert server.engine.requests == [("Hi.", "Vivian", "chinese")]


async def test_plain_text_with_tags_is_not_read_as_ssml(start_server) -> None:  # noqa: F811
    server = await start_server()
    client = await server.client()

    await client.write_event(Synthesize(text="<b>Bold</b> move.", voice=SynthesizeVoice(name="Ryan")).event())
    await read_until(client, "audio-stop")

    assert server.engine.requests == [("Bold move.", "Ryan", "english")]


BAD_REQUESTS = {
    "malformed": (Synthesize(text="<speak>Hi <b>there</speak>", text_format="ssml"), "invalid-ssml"),
    "doctype": (
        Synthesize(text='<!DOCTYPE speak [<!ENTITY a "aaaa">]><speak>&a;</speak>', text_format="ssml"),
        "invalid-ssml",
    ),
    "unknown format": (Synthesize(text="Hi.", text_format="markdown"), "invalid-event"),
    "unsupported xml:lang": (Synthesize(text='<speak xml:lang="sv">Hej.</speak>', text_format="ssml"), None),
}


async def test_bad_ssml_gets_a_clear_error_and_closes_the_connection(start_server) -> None:  # noqa: F811
    server = await start_server()
    for name, (request, code) in BAD_REQUESTS.items():
        client = await server.client()
        await client.write_event(request.event())
        events = await read_until_closed(client)
        assert Error.is_type(events[-1].type), name
        error = Error.from_event(events[-1])
        assert error.code == (code or "unsupported-language"), name
        assert error.text, name
    assert server.engine.requests == []

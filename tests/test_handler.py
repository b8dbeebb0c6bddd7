"""The event handler over real sockets: a wyoming AsyncTcpServer with a fake engine.

The fake engine's PCM encodes the sentence it was made for and each sample's
position in it, so audio that is lost, doubled, reordered or mixed with
another connection's shows up as a byte mismatch.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import zlib
from array import array
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncTcpServer
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from wyoming_qwen3tts.engine.seams import Engine
from wyoming_qwen3tts.requests import EngineError
from wyoming_qwen3tts.service import SpeechOptions, SpeechService
from wyoming_qwen3tts.text import split_sentences
from wyoming_qwen3tts.voices.voice import Voice
from wyoming_qwen3tts.worker import InferenceWorker
from wyoming_qwen3tts.wyoming.handler import HandlerOptions, Qwen3TTSEventHandler

SAMPLES_PER_CHAR = 64
SAMPLES_PER_CHUNK = 256  # the handler's audio-chunk size in these tests
MAX_TEXT_CHARS = 200
READ_TIMEOUT = 5.0

VOICES = (
    Voice("Ryan", "preset", "Ryan, an English voice", ("english",), speaker="ryan"),
    Voice("Vivian", "preset", "", (), speaker="vivian"),
    Voice("Uncle", "preset", "Uncle Fu", ("chinese", "beijing_dialect"), speaker="uncle_fu"),
    Voice("narrator", "clone", "Cloned from narrator.wav", ("german",)),
)


def expected_pcm(sentence: str) -> bytes:
    """The audio the fake engine makes for one sentence."""
    base = zlib.crc32(sentence.encode())
    samples = array("h", (((base + i) & 0xFFFF) - 0x8000 for i in range(len(sentence) * SAMPLES_PER_CHAR)))
    return samples.tobytes()


def expected_audio(text: str) -> bytes:
    return b"".join(expected_pcm(sentence) for sentence in split_sentences(text))


class FakeEngine(Engine):
    """Deterministic PCM in engine chunks of chunk_bytes, each after step_seconds of "work".

    A sentence containing REFUSE raises EngineError when called; one containing
    CRASH raises RuntimeError after its first chunk.
    """

    model_kind = "custom_voice"

    def __init__(self, step_seconds: float = 0.0, chunk_bytes: int = 600) -> None:
        self.step_seconds = step_seconds
        self.chunk_bytes = chunk_bytes
        self.requests: list[tuple[str, str, str]] = []  # (sentence, voice name, language)
        self.started: dict[str, float] = {}  # sentence -> when its synthesis began
        self.steps: list[str] = []  # the sentence of every chunk made, in order
        self.threads: set[str] = set()

    def languages(self) -> tuple[str, ...]:
        return ("chinese", "english", "german", "beijing_dialect")

    def voices(self) -> tuple[Voice, ...]:
        return VOICES

    def synthesize(self, text: str, voice: Voice, language: str) -> Iterator[bytes]:
        self.requests.append((text, voice.name, language))
        if "REFUSE" in text:
            raise EngineError("This voice will not say that", "voice-refused")
        return self._chunks(text)

    def _chunks(self, text: str) -> Iterator[bytes]:
        self.started[text] = time.monotonic()
        pcm = expected_pcm(text)
        for offset in range(0, len(pcm), self.chunk_bytes):
            if "CRASH" in text and offset:
                raise RuntimeError("boom")
            time.sleep(self.step_seconds)
            self.threads.add(threading.current_thread().name)
            self.steps.append(text)
            yield pcm[offset : offset + self.chunk_bytes]


@dataclass
class Server:
    """A running server and what it was built with."""

    engine: FakeEngine
    port: int
    tcp_server: AsyncTcpServer
    worker: InferenceWorker
    clients: list[AsyncTcpClient] = field(default_factory=list)

    async def client(self) -> AsyncTcpClient:
        client = AsyncTcpClient("127.0.0.1", self.port, read_timeout=READ_TIMEOUT)
        await client.connect()
        self.clients.append(client)
        return client


@pytest.fixture
async def start_server() -> AsyncIterator:
    """Start servers with a given engine and options; stop them all after the test."""
    servers: list[Server] = []

    async def start(engine: FakeEngine | None = None, **options: Any) -> Server:
        """options: fields of SpeechOptions or HandlerOptions."""
        engine = engine or FakeEngine()
        settings = {"samples_per_chunk": SAMPLES_PER_CHUNK, "max_text_chars": MAX_TEXT_CHARS, **options}
        speech_fields = SpeechOptions.__dataclass_fields__
        speech = SpeechOptions(**{k: v for k, v in settings.items() if k in speech_fields})
        handler = HandlerOptions(**{k: v for k, v in settings.items() if k not in speech_fields})
        worker = InferenceWorker()
        tcp_server = AsyncTcpServer("127.0.0.1", 0)
        service = SpeechService(engine, speech, worker)
        await tcp_server.start(partial(Qwen3TTSEventHandler, service, handler))
        port = cast(asyncio.Server, tcp_server._server).sockets[0].getsockname()[1]
        server = Server(engine, port, tcp_server, worker)
        servers.append(server)
        return server

    yield start

    for server in servers:
        for client in server.clients:
            await client.disconnect()
        handler_tasks = list(server.tcp_server._handlers)
        await server.tcp_server.stop()
        if handler_tasks:
            await asyncio.wait(handler_tasks, timeout=READ_TIMEOUT)
        await server.worker.aclose()


async def read_until(client: AsyncTcpClient, last_type: str) -> list[Event]:
    """Events up to and including the first of last_type."""
    events: list[Event] = []
    while True:
        event = await client.read_event()
        assert event is not None, f"connection closed after {types(events)}"
        events.append(event)
        if event.type == last_type:
            return events


async def read_until_closed(client: AsyncTcpClient) -> list[Event]:
    events: list[Event] = []
    while (event := await client.read_event()) is not None:
        events.append(event)
    return events


def types(events: list[Event]) -> list[str]:
    return [event.type for event in events]


def audio_of(events: list[Event]) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))


def assert_one_response(events: list[Event]) -> None:
    """One audio-start first, only audio-chunks between it and the one audio-stop."""
    kinds = types(events)
    assert kinds[0] == "audio-start"
    assert kinds.count("audio-start") == 1
    assert kinds.count("audio-stop") == 1
    assert set(kinds[1 : kinds.index("audio-stop")]) <= {"audio-chunk"}


async def speak(client: AsyncTcpClient, text: str, voice: SynthesizeVoice | None = None) -> list[Event]:
    await client.write_event(Synthesize(text=text, voice=voice).event())
    return await read_until(client, "audio-stop")


# -- describe -------------------------------------------------------------------


async def test_describe_lists_the_program_and_every_voice(start_server) -> None:
    server = await start_server(program_name="qwen3-tts-test", version="9.9")
    client = await server.client()
    await client.write_event(Describe().event())
    event = await client.read_event()
    assert event is not None and Info.is_type(event.type)
    info = Info.from_event(event)

    assert len(info.tts) == 1
    program = info.tts[0]
    assert program.name == "qwen3-tts-test"
    assert program.version == "9.9"
    assert program.installed
    assert program.supports_synthesize_streaming
    assert "Qwen" in program.attribution.name
    assert program.attribution.url.startswith("https://")

    voices = {voice.name: voice for voice in program.voices}
    assert list(voices) == ["Ryan", "Vivian", "Uncle", "narrator"]
    assert all(voice.installed for voice in voices.values())
    assert voices["Ryan"].languages == ["en"]
    assert voices["Ryan"].description == "Ryan, an English voice"
    assert voices["Vivian"].languages == ["zh", "en", "de"]  # no languages of its own: all, dialect folded
    assert voices["Vivian"].description == "Vivian"
    assert voices["Uncle"].languages == ["zh"]
    assert voices["narrator"].languages == ["de"]
    # A speaker is listed only when it has a name of its own.
    assert voices["Ryan"].speakers is None
    assert voices["narrator"].speakers is None
    assert [speaker.name for speaker in voices["Uncle"].speakers or []] == ["uncle_fu"]


async def test_ping_is_answered(start_server) -> None:
    client = await (await start_server()).client()
    await client.write_event(Ping(text="hi").event())
    event = await client.read_event()
    assert event is not None and Pong.is_type(event.type)
    assert Pong.from_event(event).text == "hi"


# -- one-shot synthesize -------------------------------------------------------------


async def test_one_shot_speaks_every_sentence_in_order(start_server) -> None:
    server = await start_server()
    client = await server.client()
    text = "Hello there, friend. How are you today? I am fine"

    events = await speak(client, text)

    assert_one_response(events)
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events if AudioChunk.is_type(e.type)]
    assert all(0 < chunk.samples <= SAMPLES_PER_CHUNK for chunk in chunks)
    assert all((chunk.rate, chunk.width, chunk.channels) == (24000, 2, 1) for chunk in chunks)
    assert audio_of(events) == expected_audio(text)
    timestamps = [chunk.timestamp or 0 for chunk in chunks]
    assert timestamps == sorted(timestamps) and timestamps[-1] > 0
    assert AudioStop.from_event(events[-1]).timestamp == len(expected_audio(text)) // 2 * 1000 // 24000
    sentences = ["Hello there, friend.", "How are you today?", "I am fine"]
    assert server.engine.requests == [(sentence, "Ryan", "english") for sentence in sentences]


async def test_first_audio_comes_before_later_sentences_are_generated(start_server) -> None:
    server = await start_server(FakeEngine(step_seconds=0.02))
    client = await server.client()
    await client.write_event(Synthesize(text="The first sentence. The second sentence.").event())

    event = await client.read_event()
    assert event is not None and AudioStart.is_type(event.type)
    event = await client.read_event()
    assert event is not None and AudioChunk.is_type(event.type)
    first_audio_at = time.monotonic()
    events = await read_until(client, "audio-stop")

    assert first_audio_at < server.engine.started["The second sentence."]
    assert audio_of(events) != b""


async def test_odd_sized_engine_chunks_are_resliced_on_whole_samples(start_server) -> None:
    server = await start_server(FakeEngine(chunk_bytes=301))
    client = await server.client()
    events = await speak(client, "An odd split of samples.")
    assert all(len(AudioChunk.from_event(e).audio) % 2 == 0 for e in events if AudioChunk.is_type(e.type))
    assert audio_of(events) == expected_audio("An odd split of samples.")


@pytest.mark.parametrize("text", ["", "   \n "])
async def test_empty_text_gives_empty_audio_and_keeps_the_connection(start_server, text: str) -> None:
    server = await start_server()
    client = await server.client()
    events = await speak(client, text)
    assert types(events) == ["audio-start", "audio-stop"]
    assert server.engine.requests == []

    await client.write_event(Describe().event())
    event = await client.read_event()
    assert event is not None and Info.is_type(event.type)


async def test_requests_on_one_connection_are_answered_in_order(start_server) -> None:
    client = await (await start_server()).client()
    await client.write_event(Synthesize(text="First request.").event())
    await client.write_event(Synthesize(text="Second request.").event())
    first = await read_until(client, "audio-stop")
    second = await read_until(client, "audio-stop")
    assert audio_of(first) == expected_audio("First request.")
    assert audio_of(second) == expected_audio("Second request.")


async def test_a_client_that_closed_its_sending_side_still_gets_its_audio(start_server) -> None:
    server = await start_server(FakeEngine(step_seconds=0.01))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await async_write_event(Synthesize(text="Say this. Then that.").event(), writer)
    writer.write_eof()
    client = AsyncTcpClient("127.0.0.1", server.port, read_timeout=READ_TIMEOUT)
    client._reader, client._writer = reader, writer
    events = await read_until_closed(client)
    writer.close()
    assert_one_response(events)
    assert audio_of(events) == expected_audio("Say this. Then that.")


# -- voice and language ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("voice", "expected_voice", "expected_language"),
    [
        (None, "Ryan", "english"),  # first voice; its only language
        ({"name": "VIVIAN"}, "Vivian", "auto"),  # any case; several languages -> default
        ({"name": "vivian", "speaker": "vivian"}, "Vivian", "auto"),  # what Home Assistant sends
        ({"name": "Ryan", "speaker": "uncle_fu"}, "Ryan", "english"),  # the name wins
        ({"name": "gone", "speaker": "uncle_fu"}, "Uncle", "auto"),  # else the speaker
        ({"speaker": "narrator"}, "narrator", "german"),  # a speaker may name a voice
        ({"language": "de-DE"}, "Ryan", "german"),
        ({"name": "Vivian", "language": "zh_CN"}, "Vivian", "chinese"),
        ({"name": "Vivian", "language": "English"}, "Vivian", "english"),
        ({"language": "auto"}, "Ryan", "auto"),
    ],
)
async def test_voice_and_language_resolution(
    start_server, voice: dict | None, expected_voice: str, expected_language: str
) -> None:
    server = await start_server()
    client = await server.client()
    data: dict = {"text": "Hello."}
    if voice is not None:
        data["voice"] = voice
    await client.write_event(Event(type="synthesize", data=data))
    await read_until(client, "audio-stop")
    assert server.engine.requests == [("Hello.", expected_voice, expected_language)]


async def test_server_defaults_apply_when_the_request_names_nothing(start_server) -> None:
    server = await start_server(default_voice="vivian", default_language="german")
    client = await server.client()
    await speak(client, "Hallo.")
    await speak(client, "Hello.", SynthesizeVoice(name="Ryan"))
    assert server.engine.requests == [("Hallo.", "Vivian", "german"), ("Hello.", "Ryan", "english")]


# -- streaming ------------------------------------------------------------------------


async def test_stream_in_home_assistant_order_speaks_the_text_once(start_server) -> None:
    server = await start_server()
    client = await server.client()
    voice = SynthesizeVoice(name="Vivian", speaker="vivian")
    pieces = ["Hello wor", "ld. How are", " you? I a", "m fine"]
    whole = "".join(pieces)

    await client.write_event(SynthesizeStart(voice=voice).event())
    for piece in pieces:
        await client.write_event(SynthesizeChunk(text=piece).event())
    # Home Assistant's copy of the whole text for servers that do not stream, inside the stream:
    await client.write_event(Synthesize(text=whole, voice=voice).event())
    await client.write_event(SynthesizeStop().event())
    events = await read_until(client, "synthesize-stopped")

    assert SynthesizeStopped.is_type(events[-1].type)
    assert AudioStop.is_type(events[-2].type)
    assert_one_response(events[:-1])
    assert audio_of(events) == expected_audio(whole)
    assert server.engine.requests == [
        ("Hello world.", "Vivian", "auto"),
        ("How are you?", "Vivian", "auto"),
        ("I am fine", "Vivian", "auto"),
    ]
    # Nothing more comes: the copy was not spoken after the stream.
    await client.write_event(Describe().event())
    event = await client.read_event()
    assert event is not None and Info.is_type(event.type)


async def test_stream_speaks_sentences_while_text_still_arrives(start_server) -> None:
    server = await start_server(FakeEngine(step_seconds=0.05))
    client = await server.client()
    await client.write_event(SynthesizeStart().event())
    await client.write_event(SynthesizeChunk(text="The first sentence is here. The sec").event())

    # Audio of the first sentence arrives before the stream is stopped...
    events = await read_until(client, "audio-chunk")
    assert types(events) == ["audio-start", "audio-chunk"]
    # ...and the handler keeps reading while it speaks: more text and a describe are taken
    # in and answered long before the first sentence's audio is complete.
    await client.write_event(SynthesizeChunk(text="ond one follows").event())
    await client.write_event(Describe().event())
    events += await read_until(client, "info")
    received = len(audio_of(events))
    assert received < len(expected_pcm("The first sentence is here.")) / 2
    await client.write_event(SynthesizeChunk(text=". And a third.").event())
    await client.write_event(SynthesizeStop().event())
    events += await read_until(client, "synthesize-stopped")

    audio_events = [e for e in events if e.type != "info"]
    assert_one_response(audio_events[:-1])
    text = "The first sentence is here. The second one follows. And a third."
    assert audio_of(events) == expected_audio(text)


async def test_stream_without_text_gives_empty_audio(start_server) -> None:
    client = await (await start_server()).client()
    await client.write_event(SynthesizeStart().event())
    await client.write_event(Synthesize(text="").event())
    await client.write_event(SynthesizeStop().event())
    events = await read_until(client, "synthesize-stopped")
    assert types(events) == ["audio-start", "audio-stop", "synthesize-stopped"]


async def test_streams_one_after_another_on_one_connection(start_server) -> None:
    client = await (await start_server()).client()
    for text in ("One stream here.", "Another stream here."):
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text=text).event())
        await client.write_event(SynthesizeStop().event())
        events = await read_until(client, "synthesize-stopped")
        assert audio_of(events) == expected_audio(text)
        assert types(events).count("audio-start") == 1


# -- several connections --------------------------------------------------------------------


async def test_describe_is_answered_quickly_during_slow_synthesis(start_server) -> None:
    server = await start_server(FakeEngine(step_seconds=0.15))
    speaking = await server.client()
    await speaking.write_event(Synthesize(text="A long and slow sentence to speak.").event())
    await read_until(speaking, "audio-chunk")

    asking = await server.client()
    started = time.monotonic()
    await asking.write_event(Describe().event())
    event = await asyncio.wait_for(asking.read_event(), timeout=1.0)
    assert event is not None and Info.is_type(event.type)
    assert time.monotonic() - started < 1.0
    pcm_bytes = len(expected_pcm("A long and slow sentence to speak."))
    steps_needed = math.ceil(pcm_bytes / server.engine.chunk_bytes)
    assert len(server.engine.steps) < steps_needed  # the synthesis was still running

    events = await read_until(speaking, "audio-stop")
    assert audio_of(events) != b""


async def test_concurrent_clients_each_get_their_own_audio_interleaved(start_server) -> None:
    server = await start_server(FakeEngine(step_seconds=0.003))
    texts = {
        "first": "Alpha client talks first. Alpha client goes on.",
        "second": "Bravo client speaks too. Bravo client is done.",
        "third": "Charlie client is here as well.",
    }
    clients = {name: await server.client() for name in texts}

    results = await asyncio.gather(*(speak(clients[name], text) for name, text in texts.items()))

    for (name, text), events in zip(texts.items(), results, strict=True):
        assert_one_response(events)
        assert audio_of(events) == expected_audio(text), name
    assert server.engine.threads == {next(iter(server.engine.threads))}  # one worker thread
    # The work was interleaved chunk by chunk, not one client after the other.
    steps = [step.split()[0] for step in server.engine.steps]
    alpha = [i for i, who in enumerate(steps) if who == "Alpha"]
    bravo = [i for i, who in enumerate(steps) if who == "Bravo"]
    assert bravo[0] < alpha[-1] and alpha[0] < bravo[-1]


# -- errors: each closes its own connection only ---------------------------------------------------


ERROR_CASES = {
    "unknown voice": (
        [Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event()],
        "unknown-voice",
    ),
    "unknown voice in a stream": (
        [SynthesizeStart(voice=SynthesizeVoice(name="nobody")).event()],
        "unknown-voice",
    ),
    "unsupported language": (
        [Event("synthesize", {"text": "Hi.", "voice": {"language": "xx"}})],
        "unsupported-language",
    ),
    "chunk without start": ([SynthesizeChunk(text="Hi.").event()], "no-stream"),
    "stop without start": ([SynthesizeStop().event()], "no-stream"),
    "second start": ([SynthesizeStart().event(), SynthesizeStart().event()], "stream-already-open"),
    "text too long": ([Synthesize(text="x" * (MAX_TEXT_CHARS + 1)).event()], "text-too-long"),
    "streamed text too long": (
        [SynthesizeStart().event()] + [SynthesizeChunk(text="Words. " * 10).event()] * 3,
        "text-too-long",
    ),
    "synthesize without text": ([Event("synthesize", {})], "invalid-event"),
    "engine error": ([Synthesize(text="Please REFUSE this.").event()], "voice-refused"),
    "engine error in a stream": (
        [
            SynthesizeStart().event(),
            SynthesizeChunk(text="Please REFUSE this.").event(),
            SynthesizeStop().event(),
        ],
        "voice-refused",
    ),
    "engine crash": ([Synthesize(text="It will CRASH midway.").event()], "synthesis-failed"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
async def test_an_error_closes_only_its_own_connection(start_server, case: str) -> None:
    requests, code = ERROR_CASES[case]
    server = await start_server()
    bystander = await server.client()
    failing = await server.client()

    for request in requests:
        await failing.write_event(request)
    events = await read_until_closed(failing)

    assert events, "no error event"
    assert Error.is_type(events[-1].type)
    error = Error.from_event(events[-1])
    assert error.code == code
    assert error.text
    assert "error" not in types(events[:-1])

    events = await speak(bystander, "Still here.")
    assert audio_of(events) == expected_audio("Still here.")


async def test_a_crash_after_some_audio_still_sends_the_error(start_server) -> None:
    client = await (await start_server()).client()
    await client.write_event(Synthesize(text="It will CRASH midway.").event())
    events = await read_until_closed(client)
    assert types(events)[:2] == ["audio-start", "audio-chunk"]
    assert Error.from_event(events[-1]).code == "synthesis-failed"
    assert "boom" in Error.from_event(events[-1]).text


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not json\n",
        b"[1, 2]\n",
        b'{"data": {}}\n',
        b"\xff\xfe\x00\n",
        b'{"type": "synthesize", "data": 5}\n',
    ],
)
async def test_garbage_closes_only_its_own_connection(start_server, garbage: bytes) -> None:
    server = await start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(garbage)
    await writer.drain()
    rest = await asyncio.wait_for(reader.read(), timeout=READ_TIMEOUT)  # until the server closes
    writer.close()
    assert b"audio" not in rest

    events = await speak(await server.client(), "Still fine.")
    assert audio_of(events) == expected_audio("Still fine.")

"""End to end: the real server (python -m wyoming_qwen3tts) on a loopback port with a tiny Qwen3-TTS model,
talked to with the wyoming client the way Home Assistant talks to it; on each backend (conftest's
`backend`), but for the start-up problems of the flags."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from conftest import QUICK, run_server_command, running_server
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

SAMPLES_PER_FRAME = 1920
TIMEOUT = 60


async def send(uri: str, *events: Event, until=None) -> list[Event]:
    """Send events, then read until the predicate holds for an event or the server closes."""
    received: list[Event] = []
    host, port = uri.removeprefix("tcp://").split(":")
    async with AsyncTcpClient(host, int(port)) as client:
        for event in events:
            await client.write_event(event)
        while True:
            event = await asyncio.wait_for(client.read_event(), TIMEOUT)
            if event is None:
                break
            received.append(event)
            if until is not None and until(event):
                break
    return received


def audio_of(events: list[Event]) -> np.ndarray:
    chunks = [AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type)]
    return np.frombuffer(b"".join(chunks), dtype="<i2")


def same_audio(got: np.ndarray, expected: np.ndarray) -> bool:
    """The same 16-bit audio, sample for sample, each sample within one step of the other's: sentences in
    flight together have their chunks decoded in one batched pass of the codec, whose float sums may round
    a sample to the neighbouring step. A different code, frame or chunk changes far more than that."""
    if got.shape != expected.shape:
        return False
    return got.size == 0 or int(np.abs(got.astype(np.int32) - expected.astype(np.int32)).max()) <= 1


def stream_as_home_assistant(uri: str, text: str, pieces: list[str], voice: str = "ryan") -> list[Event]:
    """A streamed request as Home Assistant sends it: start, text pieces, the compatibility echo of the
    whole text, stop; read until synthesize-stopped."""
    wanted = SynthesizeVoice(name=voice)
    return asyncio.run(
        send(
            uri,
            SynthesizeStart(voice=wanted).event(),
            *[SynthesizeChunk(text=piece).event() for piece in pieces],
            Synthesize(text=text, voice=wanted).event(),
            SynthesizeStop().event(),
            until=lambda e: SynthesizeStopped.is_type(e.type),
        )
    )


def is_audio_stop(event: Event) -> bool:
    return AudioStop.is_type(event.type)


async def describe(uri: str) -> Info:
    events = await send(uri, Describe().event(), until=lambda e: Info.is_type(e.type))
    return Info.from_event(events[-1])


def test_describe_lists_the_preset_voices(custom_voice_server):
    info = asyncio.run(describe(custom_voice_server.uri))
    (program,) = info.tts
    assert program.supports_synthesize_streaming is True
    names = {voice.name for voice in program.voices}
    assert {"ryan", "vivian", "ono_anna", "eric"} <= names
    ryan = next(v for v in program.voices if v.name == "ryan")
    assert "en" in ryan.languages and "de" in ryan.languages
    assert program.attribution.name and program.version


def test_one_shot_synthesis_streams_chunks(custom_voice_server):
    text = "Hello there. How are you today?"
    events = asyncio.run(
        send(
            custom_voice_server.uri,
            Synthesize(text=text, voice=SynthesizeVoice(name="ryan")).event(),
            until=is_audio_stop,
        )
    )
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-1] == "audio-stop"
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    assert types.count("audio-chunk") > 2
    audio = audio_of(events)
    assert audio.size > 0 and audio.size % SAMPLES_PER_FRAME == 0
    assert np.abs(audio).max() > 0


def test_home_assistant_streaming_order_speaks_each_sentence_once(custom_voice_server):
    uri = custom_voice_server.uri
    text = "The kitchen light is on. The front door is locked."
    one_shot = asyncio.run(
        send(uri, Synthesize(text=text, voice=SynthesizeVoice(name="ryan")).event(), until=is_audio_stop)
    )

    events = stream_as_home_assistant(
        uri, text, ["The kit", "chen light is", " on. The fr", "ont door is locked."]
    )
    types = [e.type for e in events]
    assert types[-1] == "synthesize-stopped"
    assert types.count("audio-start") == 1 and types.count("audio-stop") == 1
    assert types.index("audio-stop") < types.index("synthesize-stopped")
    # Greedy decoding is deterministic: the stream must carry exactly the one-shot audio, the echo unspoken.
    assert np.array_equal(audio_of(events), audio_of(one_shot))


def test_empty_text_gets_an_empty_response(custom_voice_server):
    events = asyncio.run(send(custom_voice_server.uri, Synthesize(text="   ").event(), until=is_audio_stop))
    assert [e.type for e in events] == ["audio-start", "audio-stop"]


def test_describe_is_answered_within_a_second_during_synthesis(custom_voice_server):
    uri = custom_voice_server.uri
    # 24 sentences of at most 16 frames (--max-frames): several seconds of work even on a fast machine.
    long_text = " ".join(f"Sentence number {i} is here." for i in range(24))

    async def scenario() -> tuple[float, list[Event]]:
        synthesis = asyncio.create_task(send(uri, Synthesize(text=long_text).event(), until=is_audio_stop))
        await asyncio.sleep(1.0)  # let the synthesis get going
        assert not synthesis.done()
        started = time.monotonic()
        await describe(uri)
        elapsed = time.monotonic() - started
        return elapsed, await synthesis

    elapsed, events = asyncio.run(scenario())
    assert elapsed < 1.0
    assert events[-1].type == "audio-stop"


def test_two_clients_each_get_their_own_complete_audio(custom_voice_server):
    uri = custom_voice_server.uri
    texts = {"ryan": "Good morning to the kitchen.", "vivian": "Good night to the bedroom, sleep well."}

    async def alone(name: str) -> np.ndarray:
        return audio_of(
            await send(
                uri,
                Synthesize(text=texts[name], voice=SynthesizeVoice(name=name)).event(),
                until=is_audio_stop,
            )
        )

    async def together() -> list[np.ndarray]:
        return list(await asyncio.gather(alone("ryan"), alone("vivian")))

    expected = [asyncio.run(alone("ryan")), asyncio.run(alone("vivian"))]
    got = asyncio.run(together())
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not np.array_equal(expected[0][: expected[1].size], expected[1][: expected[0].size])


@pytest.mark.parametrize(
    ("events", "code"),
    [
        ([Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event()], "unknown-voice"),
        ([Synthesize(text="Hi.", voice=SynthesizeVoice(name="../ryan")).event()], "unknown-voice"),
        ([SynthesizeChunk(text="Hi.").event()], None),
        ([Synthesize(text="x" * 6000).event()], "text-too-long"),
    ],
)
def test_bad_requests_get_an_error_and_a_closed_connection(custom_voice_server, events, code):
    uri = custom_voice_server.uri
    received = asyncio.run(send(uri, *events))  # reads until the server closes the connection
    errors = [Error.from_event(e) for e in received if Error.is_type(e.type)]
    assert len(errors) == 1 and errors[0].text
    if code:
        assert errors[0].code == code
    # Everyone else is still served.
    assert asyncio.run(describe(uri)).tts


def test_garbage_on_the_socket_closes_only_that_connection(custom_voice_server):
    host, port = custom_voice_server.uri.removeprefix("tcp://").split(":")

    async def garbage() -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b'this is not json\n{"type": 5}\n')
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        return data

    asyncio.run(garbage())
    assert asyncio.run(describe(custom_voice_server.uri)).tts


def test_clone_voices_from_the_voices_directory(model_args, voices_dir, tmp_path):
    args = [*model_args("base"), "--voices-dir", str(voices_dir), *QUICK]
    args += ["--data-dir", str(tmp_path)]  # its clone prompt cache
    with running_server(args) as server:
        info = asyncio.run(describe(server.uri))
        voices = {v.name: v for v in info.tts[0].voices}
        assert set(voices) == {"anna", "bob"}
        assert voices["anna"].languages == ["en"] and voices["anna"].description == "Anna, cloned"
        for name in ("anna", "bob"):
            events = asyncio.run(
                send(
                    server.uri,
                    Synthesize(text="Hello.", voice=SynthesizeVoice(name=name)).event(),
                    until=is_audio_stop,
                )
            )
            assert audio_of(events).size % SAMPLES_PER_FRAME == 0 and np.abs(audio_of(events)).max() > 0


def test_voice_design_model_speaks_its_default_voice(model_args):
    # With the warm-up: it speaks the first voice before the server is ready.
    args = [*model_args("voice_design"), "--greedy", "--threads", "1", "--max-frames", "16"]
    with running_server(args) as server:
        info = asyncio.run(describe(server.uri))
        assert [v.name for v in info.tts[0].voices] == ["default"]
        events = asyncio.run(send(server.uri, Synthesize(text="Hello.").event(), until=is_audio_stop))
        assert audio_of(events).size > 0


@pytest.mark.parametrize(
    ("args", "exit_code", "needle"),
    [
        (["--model", "/nonexistent/model"], 2, "does not exist"),
        (["--dtype", "int3"], 2, "--dtype"),
        (["--backend", "ipex", "--model", "/tmp"], 2, "script/setup --ipex"),
        (
            ["--model", "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", "--data-dir", "/nonexistent"],
            2,
            "could not be downloaded",
        ),
    ],
)
def test_startup_problems_are_one_clear_line(args, exit_code, needle):
    result = run_server_command(args)
    assert result.returncode == exit_code
    assert needle in result.stderr
    assert "Traceback" not in result.stderr

"""Continuous batching end to end: the real server batches every sentence in flight, from Wyoming and
HTTP clients alike, and each client still gets the audio it gets alone.

float32 weights and greedy decoding make a sentence's audio a function of its text and voice, so the
audio of each client in a crowd is compared sample by sample with the same request spoken alone (each
sample within one 16-bit step: chunks due together are decoded in one batched codec pass, see same_audio). The
server runs with --debug: its log says how many sentences are in flight after each join and leave, so
a test can see that a client who left freed its place.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import free_port, running_server
from test_server import QUICK, audio_of, is_audio_stop, same_audio, send
from wyoming.client import AsyncTcpClient
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

SENTENCES = [
    "The kitchen light is on.",
    "The front door is locked.",
    "It will rain this afternoon.",
    "Dinner is ready in ten minutes.",
]
FLOAT = ["--dtype", "float32", "--quantize", "none"]


@pytest.fixture(scope="module", params=["in-turn", "codec-thread"])
def server(tiny_models, request):
    """The batching server; with two threads, the codec decodes beside the steps (engine/codec_thread.py)."""
    http_port = free_port()
    args = [
        "--model",
        str(tiny_models["custom_voice"]),
        *QUICK,
        *FLOAT,
        "--max-batch",
        "4",
        "--look-ahead",
        "2",
        *(["--threads", "2"] if request.param == "codec-thread" else []),
    ]
    with running_server([*args, "--http-uri", f"tcp://127.0.0.1:{http_port}", "--debug"]) as process:
        process.http = f"http://127.0.0.1:{http_port}"
        assert ("beside the steps" in process.log()) == (request.param == "codec-thread")
        yield process


def one_shot(uri: str, text: str, voice: str = "ryan") -> np.ndarray:
    events = asyncio.run(
        send(uri, Synthesize(text=text, voice=SynthesizeVoice(name=voice)).event(), until=is_audio_stop)
    )
    return audio_of(events)


def http_pcm(base: str, text: str, voice: str = "vivian") -> np.ndarray:
    body = f'{{"input": "{text}", "voice": "{voice}", "response_format": "pcm"}}'.encode()
    request = urllib.request.Request(
        base + "/v1/audio/speech", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return np.frombuffer(response.read(), dtype="<i2")


def in_flight(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"\((\d+) in flight\)", log)]


def test_three_wyoming_clients_and_one_http_client_at_once_each_get_their_solo_audio(server):
    voices = ["ryan", "eric", "serena"]
    solo = [one_shot(server.uri, text, voice) for text, voice in zip(SENTENCES, voices, strict=False)]
    solo_http = http_pcm(server.http, SENTENCES[3])
    results: dict[str, np.ndarray] = {}

    def wyoming(index: int) -> None:
        results[f"w{index}"] = one_shot(server.uri, SENTENCES[index], voices[index])

    def http() -> None:
        results["http"] = http_pcm(server.http, SENTENCES[3])

    start = len(server.lines)
    threads = [threading.Thread(target=wyoming, args=(i,)) for i in range(3)] + [
        threading.Thread(target=http)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for index in range(3):
        assert same_audio(results[f"w{index}"], solo[index]), f"client {index}"
    assert same_audio(results["http"], solo_http)
    assert max(in_flight("".join(server.lines[start:]))) >= 2  # they really ran in one batch


def test_a_streamed_answer_is_spoken_in_order_with_look_ahead(server):
    solo = np.concatenate([one_shot(server.uri, text) for text in SENTENCES])
    text = " ".join(SENTENCES)
    words = text.split(" ")
    start = len(server.lines)
    events = asyncio.run(
        send(
            server.uri,
            SynthesizeStart(voice=SynthesizeVoice(name="ryan")).event(),
            *[SynthesizeChunk(text=word + " ").event() for word in words],
            Synthesize(text=text, voice=SynthesizeVoice(name="ryan")).event(),  # Home Assistant's echo
            SynthesizeStop().event(),
            until=lambda e: SynthesizeStopped.is_type(e.type),
        )
    )
    assert same_audio(audio_of(events), solo)  # every sentence, once, in order
    assert max(in_flight("".join(server.lines[start:]))) >= 2  # later sentences ran ahead, batched


def wait_for_idle_batch(server, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = in_flight(server.log())
        if counts and counts[-1] == 0:
            return counts
        time.sleep(0.1)
    raise AssertionError(f"the batch never emptied: {in_flight(server.log())[-10:]}")


def test_a_client_that_leaves_mid_stream_frees_its_places_and_costs_the_others_nothing(server):
    long_text = " ".join(SENTENCES * 2)
    solo = one_shot(server.uri, SENTENCES[1], "eric")
    results: dict[str, np.ndarray] = {}

    async def leave_after_first_audio() -> None:
        async with AsyncTcpClient("127.0.0.1", server.port) as client:
            await client.write_event(Synthesize(text=long_text, voice=SynthesizeVoice(name="ryan")).event())
            while not (await client.read_event()).type == "audio-chunk":
                pass
        # closed here, with sentences of it still in the batch and ahead

    def stay() -> None:
        results["stay"] = one_shot(server.uri, SENTENCES[1], "eric")

    other = threading.Thread(target=stay)
    other.start()
    asyncio.run(leave_after_first_audio())
    other.join(timeout=300)
    assert same_audio(results["stay"], solo)
    wait_for_idle_batch(server)
    assert "cancelled sentences left the batch" in server.log() or "outcome=dropped" in server.log()


def test_an_http_request_cancelled_mid_batch_frees_its_places(server):
    solo = one_shot(server.uri, SENTENCES[2], "ryan")
    long_text = " ".join(SENTENCES * 2)
    body = f'{{"input": "{long_text}", "voice": "vivian", "response_format": "pcm"}}'.encode()
    request = urllib.request.Request(
        server.http + "/v1/audio/speech", data=body, headers={"Content-Type": "application/json"}
    )
    start = len(server.lines)
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.read(4096)  # the first audio, then the client hangs up
    wait_for_idle_batch(server)
    assert "cancelled sentences left the batch" in "".join(server.lines[start:])
    assert same_audio(one_shot(server.uri, SENTENCES[2], "ryan"), solo)  # nothing of it is left

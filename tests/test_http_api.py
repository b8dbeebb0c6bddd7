"""The OpenAI-compatible HTTP API end to end: the real server with --http-uri on the tiny models, talked to
with the official `openai` client (and plain HTTP where the client hides what is tested).

Greedy decoding and --max-frames make audio a function of text and voice, so every format is checked
against the raw PCM of the same request.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
import openai
import pytest
from conftest import ServerProcess, free_port, run_server_command, running_server
from test_server import QUICK, audio_of, is_audio_stop, same_audio, send
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

API_KEY = "test-key"
RATE = 24000
SAMPLES_PER_FRAME = 1920
FRAMES = 16
TEXT = "Hello there. How are you today?"
LOSSY_SLACK_SECONDS = 0.1  # encoder delay and padding of mp3 (1152 + 576 samples) and aac (1024 + 1024)


@dataclass
class HttpServer:
    process: ServerProcess
    base_url: str

    def client(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0, timeout=120)

    def request(self, path: str, body: dict | None = None, key: str | None = API_KEY):
        """(status, headers, body bytes) of a plain HTTP request."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method="POST" if data else "GET")
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()


def start_http_server(model_dir, *extra: str) -> Iterator[HttpServer]:
    port = free_port()
    args = ["--model", str(model_dir), "--http-uri", f"tcp://127.0.0.1:{port}", *QUICK, *extra]
    with running_server(args) as process:
        yield HttpServer(process, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def api(tiny_models) -> Iterator[HttpServer]:
    """A CustomVoice server with the HTTP API, a key, two HTTP syntheses at most and short texts."""
    yield from start_http_server(
        tiny_models["custom_voice"],
        "--http-api-key",
        API_KEY,
        "--http-max-requests",
        "2",
        "--max-text-chars",
        "400",
    )


def speech(api: HttpServer, response_format: str = "pcm", **kwargs) -> bytes:
    kwargs.setdefault("voice", "Vivian")
    kwargs.setdefault("input", TEXT)
    if "language" in kwargs:  # this server's extra field
        kwargs["extra_body"] = {"language": kwargs.pop("language")}
    return (
        api.client().audio.speech.create(model="qwen3-tts", response_format=response_format, **kwargs).content
    )


def decoded_seconds(data: bytes, response_format: str) -> float:
    if response_format == "pcm":
        return len(data) / 2 / RATE
    with av.open(io.BytesIO(data)) as container:
        rate = container.streams.audio[0].rate
        return sum(frame.samples for frame in container.decode(audio=0)) / rate


def error_of(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_the_seed_guides_snippet_works_unchanged(api):
    client = openai.OpenAI(base_url=api.base_url + "/v1", api_key=API_KEY)
    response = client.audio.speech.create(model="qwen3-tts", voice="Vivian", input="Hello from the guide.")
    assert response.response.headers["content-type"] == "audio/mpeg"
    assert decoded_seconds(response.content, "mp3") > 0.5


@pytest.mark.parametrize("response_format", ["mp3", "opus", "aac", "flac", "wav"])
def test_every_format_decodes_to_the_samples_of_the_raw_pcm(api, response_format):
    pcm = speech(api, "pcm")
    expected = len(pcm) / 2 / RATE
    assert expected == pytest.approx(2 * FRAMES * SAMPLES_PER_FRAME / RATE)  # two sentences, capped
    got = decoded_seconds(speech(api, response_format), response_format)
    if response_format in ("flac", "wav"):
        assert got == expected
    else:
        assert expected <= got + 0.01 and got <= expected + LOSSY_SLACK_SECONDS


def test_wav_holds_the_same_samples_as_pcm(api):
    pcm = np.frombuffer(speech(api, "pcm"), dtype="<i2")
    with av.open(io.BytesIO(speech(api, "wav"))) as container:
        wav = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert np.array_equal(pcm, wav)


def test_speech_streams_before_synthesis_ends(api):
    arrivals = []
    started = time.monotonic()
    with api.client().audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm"
    ) as response:
        for chunk in response.iter_bytes():
            arrivals.append((time.monotonic() - started, len(chunk)))
    assert sum(n for _, n in arrivals) == 2 * FRAMES * SAMPLES_PER_FRAME * 2
    assert len(arrivals) > 3
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first < 0.5 * last, arrivals


def test_sse_events_carry_the_audio(api):
    status, headers, body = api.request(
        "/v1/audio/speech",
        {"input": TEXT, "voice": "vivian", "response_format": "pcm", "stream_format": "sse"},
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data: ")) for line in body.decode().splitlines() if line]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert audio == speech(api, "pcm", voice="vivian")


def test_speed_stretches_time(api):
    normal = len(speech(api, "pcm"))
    fast = len(speech(api, "pcm", speed=2.0))
    slow = len(speech(api, "pcm", speed=0.5))
    assert fast == pytest.approx(normal / 2, rel=0.05)
    assert slow == pytest.approx(normal * 2, rel=0.05)


def test_a_language_model_name_selects_the_language(api):
    # tts-1-de speaks German: the same text in another language is different audio (greedy either way).
    english = speech(api, "pcm", input="Guten Morgen.", language="en")
    german = (
        api.client()
        .audio.speech.create(
            model="tts-1-hd-de", voice="vivian", input="Guten Morgen.", response_format="pcm"
        )
        .content
    )
    assert german == speech(api, "pcm", input="Guten Morgen.", language="german")
    assert german != english


def test_instructions_a_voice_cannot_follow_are_ignored_with_a_header(api):
    response = api.client().audio.speech.with_raw_response.create(
        model="qwen3-tts", voice="ryan", input="Hi.", response_format="pcm", instructions="Whisper"
    )
    assert "does not follow instructions" in response.headers["x-instructions-ignored"]
    assert response.content == speech(api, "pcm", voice="ryan", input="Hi.")


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"input": "Hi.", "voice": "nobody"}, 404, "voice", "unknown-voice"),
        ({"input": "", "voice": "ryan"}, 400, "input", "empty-input"),
        ({"input": "word " * 100, "voice": "ryan"}, 400, "input", "text-too-long"),
        ({"input": "Hi.", "response_format": "ogg-vorbis"}, 400, "response_format", "unsupported-format"),
        ({"input": "Hi.", "speed": 5}, 400, "speed", "invalid-speed"),
        ({"input": "Hi.", "model": "whisper-1"}, 400, "model", "model_not_found"),
        ({"input": "Hi.", "language": "klingon"}, 400, "language", "unsupported-language"),
        ({"voice": "ryan"}, 400, "input", "invalid-request"),
    ],
)
def test_bad_requests_get_openais_error_shape(api, body, status, param, code):
    got_status, _, response = api.request("/v1/audio/speech", body)
    error = error_of(response)
    assert (got_status, error["param"], error["code"]) == (status, param, code), error


def test_the_openai_client_raises_on_errors(api):
    with pytest.raises(openai.NotFoundError, match="Unknown voice"):
        api.client().audio.speech.create(model="tts-1", voice="nobody", input="Hi.")


def test_a_missing_or_wrong_key_is_refused(api):
    for key in (None, "wrong"):
        status, _, body = api.request("/v1/audio/speech", {"input": "Hi."}, key=key)
        assert status == 401 and error_of(body)["type"] == "authentication_error"
    assert api.request("/health", key=None)[0] == 200  # open, for health checks


def test_models_voices_and_health(api):
    status, _, body = api.request("/v1/models")
    assert status == 200 and {"qwen3-tts", "tts-1", "tts-1-hd"} <= {m["id"] for m in json.loads(body)["data"]}
    voices = json.loads(api.request("/v1/audio/voices")[2])["data"]
    assert json.loads(api.request("/v1/voices")[2])["data"] == voices
    by_name = {v["name"]: v for v in voices}
    assert {"vivian", "ryan", "uncle_fu"} <= set(by_name)
    assert "alloy" in by_name["vivian"]["openai_names"] and "onyx" in by_name["uncle_fu"]["openai_names"]
    # The same voices with the same languages, in the same order, as Wyoming's describe lists them.
    info = Info.from_event(
        asyncio.run(send(api.process.uri, Describe().event(), until=lambda e: Info.is_type(e.type)))[-1]
    )
    described = {v.name: v.languages for v in info.tts[0].voices}
    assert {name: v["languages"] for name, v in by_name.items()} == described
    health = json.loads(api.request("/health", key=None)[2])
    assert health["status"] == "ok" and health["voices"] == len(voices) and health["backend"] == "pytorch"
    assert api.request("/docs", key=None)[0] == 200


def test_a_full_queue_is_503_with_retry_after(api):
    results: list[int] = []

    def long_request() -> None:
        results.append(api.request("/v1/audio/speech", {"input": TEXT * 3, "response_format": "pcm"})[0])

    threads = [threading.Thread(target=long_request) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    status, headers, body = 200, {}, b""
    while time.monotonic() < deadline and status != 503:
        time.sleep(0.2)
        status, headers, body = api.request("/v1/audio/speech", {"input": "Hi.", "response_format": "pcm"})
    for thread in threads:
        thread.join()
    assert status == 503 and headers["Retry-After"] == "1" and error_of(body)["code"] == "busy"
    assert results == [200, 200]


def test_http_and_wyoming_clients_each_get_their_own_audio_and_describe_stays_fast(api):
    expected_http = speech(api, "pcm", voice="vivian", input=TEXT)
    expected_wyoming = asyncio.run(
        send(
            api.process.uri,
            Synthesize(text="Good night.", voice=SynthesizeVoice(name="ryan")).event(),
            until=is_audio_stop,
        )
    )
    http_result: list[bytes] = []
    thread = threading.Thread(
        target=lambda: http_result.append(speech(api, "pcm", voice="vivian", input=TEXT))
    )
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    asyncio.run(send(api.process.uri, Describe().event(), until=lambda e: Info.is_type(e.type)))
    describe_seconds = time.monotonic() - started
    wyoming = asyncio.run(
        send(
            api.process.uri,
            Synthesize(text="Good night.", voice=SynthesizeVoice(name="ryan")).event(),
            until=is_audio_stop,
        )
    )
    thread.join()
    assert describe_seconds < 1.0
    assert len(http_result) == 1
    assert same_audio(np.frombuffer(http_result[0], "<i2"), np.frombuffer(expected_http, "<i2"))
    assert same_audio(audio_of(wyoming), audio_of(expected_wyoming))


def test_voice_clone_needs_a_base_model(api, voices_dir):
    reference = base64.b64encode((voices_dir / "anna.wav").read_bytes()).decode()
    status, _, body = api.request("/v1/audio/voice-clone", {"input": "Hi.", "ref_audio": reference})
    assert status == 400 and error_of(body)["code"] == "cannot-clone"


@pytest.fixture(scope="module")
def base_api(tiny_models, voices_dir, tmp_path_factory) -> Iterator[HttpServer]:
    """A Base model server; its voices directory has anna (audio + transcript) and bob (audio only)."""
    data_dir = tmp_path_factory.mktemp("base-api-data")
    yield from start_http_server(
        tiny_models["base"],
        "--voices-dir",
        str(voices_dir),
        "--data-dir",
        str(data_dir),
        "--voices-reload-interval",
        "0",
    )


def test_voice_clone_in_context_speaks_as_the_same_voice_from_the_voices_dir(base_api, voices_dir):
    reference = base64.b64encode((voices_dir / "anna.wav").read_bytes()).decode()
    transcript = (voices_dir / "anna.txt").read_text(encoding="utf-8").strip()
    body = {
        "input": "Hi.",
        "ref_audio": reference,
        "ref_text": transcript,
        "language": "en",
        "response_format": "pcm",
    }
    status, _, cloned = base_api.request("/v1/audio/voice-clone", body)
    assert status == 200, cloned
    assert cloned == speech(base_api, "pcm", voice="anna", input="Hi.")  # same audio, same prompt
    status, _, embedding_only = base_api.request(
        "/v1/audio/voice-clone", {**body, "x_vector_only_mode": True}
    )
    assert status == 200 and len(embedding_only) == len(cloned) and embedding_only != cloned


@pytest.mark.parametrize(
    ("ref_audio", "needle"),
    [
        ("not base64!", "base64"),
        (base64.b64encode(b"RIFF....not audio at all").decode(), "cannot be read as audio"),
    ],
)
def test_voice_clone_with_bad_audio_is_a_clear_400(base_api, ref_audio, needle):
    status, _, body = base_api.request("/v1/audio/voice-clone", {"input": "Hi.", "ref_audio": ref_audio})
    error = error_of(body)
    assert status == 400 and error["code"] == "invalid-audio" and needle in error["message"]
    assert base_api.request("/health")[0] == 200


def test_health_is_503_while_the_model_loads(tiny_models):
    port = free_port()
    process = ServerProcess(
        ["--model", str(tiny_models["custom_voice"]), "--http-uri", f"tcp://127.0.0.1:{port}", *QUICK]
    )
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 200 not in seen:
            assert process.process.poll() is None, process.stop()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    seen.append(response.status)
            except urllib.error.HTTPError as err:
                seen.append(err.code)
                assert json.loads(err.read()) == {"status": "loading"} and err.headers["Retry-After"]
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
    finally:
        process.stop()
    assert seen[0] == 503 and seen[-1] == 200, seen


def test_a_taken_http_port_is_one_clear_line(tiny_models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server_command(
            [
                "--model",
                str(tiny_models["custom_voice"]),
                "--uri",
                f"tcp://127.0.0.1:{free_port()}",
                "--http-uri",
                f"tcp://127.0.0.1:{port}",
            ]
        )
    assert result.returncode != 0
    assert f"--http-uri tcp://127.0.0.1:{port}: cannot listen" in result.stderr
    assert "Traceback" not in result.stderr

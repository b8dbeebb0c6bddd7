"""The voice studio's routes end to end: the real server on the tiny Base and VoiceDesign models.

Saving is on only with --http-api-key (and then needs the key, except from --http-trusted-peer); a saved
voice is in voices.json and `describe` at once; rename and delete change only voices.json's voices.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import shutil
import uuid
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf
from conftest import free_port, running_server
from test_server import QUICK, send
from wyoming.info import Describe, Info

from wyoming_qwen3tts.settings import SettingsError, parse_settings

API_KEY = "studio-key"
TRUSTED = "127.0.0.2"  # the tests connect from this loopback address to play the ingress proxy
RATE = 24000


def recording(seconds: float = 20.0, rate: int = 44100, speech: tuple[float, float] = (5.0, 12.0)) -> bytes:
    """A WAV of a buzzing, syllable-like tone between speech[0] and speech[1], silence around it."""
    t = np.arange(int(seconds * rate)) / rate
    voiced = (t >= speech[0]) & (t < speech[1])
    tone = 0.3 * np.sin(2 * np.pi * 160 * t) * (1 + 0.6 * np.sin(2 * np.pi * 4 * t)) * voiced
    noise = 0.001 * np.random.default_rng(7).standard_normal(t.size)
    buffer = io.BytesIO()
    sf.write(buffer, (tone + noise).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body, as a browser's FormData sends it."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@dataclass
class Studio:
    """A running server with the HTTP API, and plain requests to it."""

    process: object
    port: int
    voices: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        fields: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
        json_body: dict | None = None,
        key: str | None = API_KEY,
        source: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = dict(headers or {})
        body = None
        if fields is not None or files is not None:
            body, headers["Content-Type"] = multipart(fields or {}, files or {})
        elif json_body is not None:
            body, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        if key:
            headers["Authorization"] = f"Bearer {key}"
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=120, source_address=(source, 0) if source else None
        )
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.headers), response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        status, _, body = self.request(method, path, **kwargs)
        return status, json.loads(body) if body else {}

    def client(self, key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0, timeout=120)

    def described(self) -> list[str]:
        events = asyncio.run(send(self.process.uri, Describe().event(), until=lambda e: Info.is_type(e.type)))
        return [voice.name for voice in Info.from_event(events[-1]).tts[0].voices]


def start_studio(model: Path, voices: Path, data: Path, *extra: str) -> Iterator[Studio]:
    port = free_port()
    args = [
        "--model",
        str(model),
        "--http-uri",
        f"tcp://127.0.0.1:{port}",
        "--voices-dir",
        str(voices),
        "--data-dir",
        str(data),
        "--voices-reload-interval",
        "0",  # a save must reload the voices by itself
        "--shutdown-grace",
        "0",  # the openai client's idle connections need not hold the stop up
        *QUICK,
        *extra,
    ]
    with running_server(args) as process:
        yield Studio(process, port, voices)


def voices_dir_with_hand_written_voices(source: Path, target: Path) -> Path:
    """anna (a per-file clone) and a hand-written voices.json with a comment and an OpenAI name."""
    shutil.copy(source / "anna.wav", target / "anna.wav")
    shutil.copy(source / "anna.txt", target / "anna.txt")
    shutil.copy(source / "bob.wav", target / "grandpa.wav")
    document = {
        "_comment": "written by hand",
        "voices": {"grandpa": {"audio": "grandpa.wav", "description": "Grandpa"}},
        "openai_voices": {"alloy": "grandpa"},
    }
    (target / "voices.json").write_text(json.dumps(document, indent=4), encoding="utf-8")
    return target


_SHARED: dict[str, Studio] = {}  # servers shared with test_upload_fuzz.py, which imports their fixtures


@pytest.fixture(scope="session")
def studio_data(tmp_path_factory) -> Path:
    """One --data-dir for the studio's servers: a clone prompt computed once is read by the others."""
    return tmp_path_factory.mktemp("studio-data")


@pytest.fixture(scope="session")
def base(tiny_models, voices_dir, studio_data, tmp_path_factory) -> Iterator[Studio]:
    """A Base model with a key, a trusted peer and voices written by hand (one per session)."""
    if "base" in _SHARED:
        yield _SHARED["base"]
        return
    voices = voices_dir_with_hand_written_voices(voices_dir, tmp_path_factory.mktemp("studio-voices"))
    for studio in start_studio(
        tiny_models["base"], voices, studio_data, "--http-api-key", API_KEY, "--http-trusted-peer", TRUSTED
    ):
        _SHARED["base"] = studio
        try:
            yield studio
        finally:
            del _SHARED["base"]


def error_of(body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def wav_info(data: bytes) -> tuple[int, int, int, float]:
    with wave.open(io.BytesIO(data)) as file:
        return (
            file.getframerate(),
            file.getnchannels(),
            file.getsampwidth(),
            file.getnframes() / file.getframerate(),
        )


# -- the Base model, saving on -----------------------------------------------------------------


def test_the_studio_says_what_it_can_do(base):
    status, info = base.json("GET", "/v1/studio")
    assert status == 200
    assert info["writes"] is True and info["why"] is None and info["model_kind"] == "base"
    assert "en" in info["languages"] and "de" in info["languages"]
    assert info["limits"] == {
        "max_bytes": 20 * 2**20,
        "min_seconds": 3,
        "max_seconds": 15,
        "max_upload_seconds": 120,
    }
    assert "Voice studio: saving voices in" in base.process.log()


def test_every_route_needs_the_key_but_from_the_trusted_peer(base):
    assert base.request("GET", "/v1/studio", key=None)[0] == 401
    assert base.request("GET", "/v1/studio", key="wrong")[0] == 401
    assert base.request("POST", "/v1/voices", fields={"name": "x"}, key=None)[0] == 401
    assert base.request("GET", "/v1/studio", key=None, source=TRUSTED)[0] == 200
    # A header cannot claim the trusted address.
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        value = f"for={TRUSTED}" if header == "Forwarded" else TRUSTED
        assert base.request("GET", "/v1/studio", key=None, headers={header: value})[0] == 401


def test_the_openai_client_with_and_without_the_key(base):
    speech = base.client().audio.speech.create(
        model="tts-1", voice="anna", input="Hi.", response_format="wav"
    )
    assert wav_info(speech.content)[0] == RATE
    with pytest.raises(openai.AuthenticationError):
        base.client("wrong").audio.speech.create(model="tts-1", voice="anna", input="Hi.")


def test_clip_finds_the_speech_in_a_long_recording(base):
    status, clip = base.json("POST", "/v1/voices/clip", files={"audio": ("take.wav", recording())})
    assert status == 200, clip
    assert clip["duration"] == pytest.approx(20.0, abs=0.01) and clip["sample_rate"] == 44100
    assert 4.0 <= clip["start"] <= 5.0 and 12.0 <= clip["end"] <= 13.0


def test_a_preview_is_a_whole_wav_and_saves_nothing(base):
    before = sorted(p.name for p in base.voices.iterdir())
    status, headers, body = base.request(
        "POST",
        "/v1/voices/preview",
        fields={
            "input": "Hello.",
            "start": "4.8",
            "end": "12.2",
            "transcript": "Hello there.",
            "language": "en",
        },
        files={"audio": ("take.wav", recording())},
    )
    assert status == 200, body
    assert headers["content-type"] == "audio/wav"
    rate, channels, width, seconds = wav_info(body)
    assert (rate, channels, width) == (RATE, 1, 2) and 0 < seconds <= 1.3
    assert sorted(p.name for p in base.voices.iterdir()) == before


def test_a_saved_voice_is_in_voices_json_and_describe_at_once(base):
    status, saved = base.json(
        "POST",
        "/v1/voices",
        fields={
            "name": "kitchen",
            "start": "4.8",
            "end": "12.2",
            "transcript": "Hello there.",
            "language": "en",
            "description": "Kitchen voice",
        },
        files={"audio": ("take.wav", recording())},
    )
    assert status == 201, saved
    assert saved["voice"]["name"] == "kitchen" and saved["voice"]["editable"] is True
    assert saved["voice"]["kind"] == "clone" and saved["voice"]["languages"] == ["en"]
    document = json.loads((base.voices / "voices.json").read_text(encoding="utf-8"))
    assert document["_comment"] == "written by hand" and document["openai_voices"] == {"alloy": "grandpa"}
    assert document["voices"]["kitchen"] == {
        "audio": "kitchen.wav",
        "transcript": "Hello there.",
        "language": "en",
        "description": "Kitchen voice",
    }
    rate, channels, width, seconds = wav_info((base.voices / "kitchen.wav").read_bytes())
    assert (rate, channels, width) == (RATE, 1, 2) and seconds == pytest.approx(7.4, abs=0.01)
    assert "kitchen" in base.described()  # no reload interval: the save reloaded the voices itself
    listed = {v["name"]: v for v in base.json("GET", "/v1/voices")[1]["data"]}
    assert listed["kitchen"]["editable"] and listed["grandpa"]["editable"] and not listed["anna"]["editable"]
    speech = base.client().audio.speech.create(
        model="tts-1", voice="kitchen", input="Hi.", response_format="wav"
    )
    assert wav_info(speech.content)[3] > 0


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("GRANDPA", 409, "voice_exists"),
        ("anna", 409, "voice_exists"),
        ("../evil", 400, "invalid_voice_name"),
        ("a/b", 400, "invalid_voice_name"),
        (".hidden", 400, "invalid_voice_name"),
        ("x" * 65, 400, "invalid_voice_name"),
        ("semi;colon", 400, "invalid_voice_name"),
    ],
)
def test_taken_and_hostile_names_are_refused(base, name, status, code):
    before = {p.name: p.read_bytes() for p in base.voices.iterdir()}
    got, body = base.json(
        "POST",
        "/v1/voices",
        fields={"name": name},
        files={"audio": ("../../etc/passwd", recording(8, speech=(1, 7)))},
    )
    assert (got, body["error"]["code"], body["error"]["param"]) == (status, code, "name")
    assert {p.name: p.read_bytes() for p in base.voices.iterdir()} == before
    assert not (base.voices.parent / "evil.wav").exists()


def test_rename_and_delete_change_only_voices_json_voices(base):
    status, saved = base.json(
        "POST",
        "/v1/voices",
        fields={"name": "porch", "x_vector_only": "true", "transcript": "ignored"},
        files={"audio": ("porch.wav", recording(6, speech=(0.5, 5.5)))},
    )
    assert status == 201, saved
    assert "transcript" not in json.loads((base.voices / "voices.json").read_text())["voices"]["porch"]
    status, changed = base.json(
        "PATCH", "/v1/voices/Porch", json_body={"name": "veranda", "description": "Out"}
    )
    assert status == 200, changed
    assert changed["voice"]["name"] == "veranda" and changed["voice"]["description"] == "Out"
    names = base.described()
    assert "veranda" in names and "porch" not in names
    status, renamed = base.json("PATCH", "/v1/voices/grandpa", json_body={"name": "opa"})
    assert status == 200, renamed
    assert json.loads((base.voices / "voices.json").read_text())["openai_voices"] == {"alloy": "opa"}
    assert base.json("PATCH", "/v1/voices/opa", json_body={"name": "anna"})[0] == 409
    assert base.json("PATCH", "/v1/voices/opa", json_body={"name": "../x"})[0] == 400
    assert base.request("DELETE", "/v1/voices/veranda")[0] == 204
    assert not (base.voices / "porch.wav").exists()
    assert "veranda" not in base.described()
    status, body = base.json("DELETE", "/v1/voices/anna")
    assert status == 400 and body["error"]["code"] == "voice_not_editable"
    status, body = base.json("PATCH", "/v1/voices/anna", json_body={"description": "x"})
    assert status == 400 and body["error"]["code"] == "voice_not_editable"
    status, body = base.json("DELETE", "/v1/voices/nobody")
    assert status == 404 and body["error"]["code"] == "unknown-voice"
    assert (base.voices / "anna.wav").exists() and (base.voices / "grandpa.wav").exists()


@pytest.mark.parametrize(
    ("fields", "files", "status", "needle"),
    [
        ({"name": "n1"}, {"audio": ("x.txt", b"just some text, not audio")}, 400, "not audio"),
        ({"name": "n2"}, {"audio": ("x.wav", recording(2, speech=(0, 2)))}, 400, "2.0 s long"),
        ({"name": "n3"}, {"audio": ("x.wav", recording(20))}, 400, "send start and end"),
        ({"name": "n4", "start": "1", "end": "19"}, {"audio": ("x.wav", recording(20))}, 400, "18.0 s long"),
        ({"name": "n5", "start": "5", "end": "1"}, {"audio": ("x.wav", recording(8))}, 400, "start < end"),
        ({"name": "n6"}, {}, 400, "audio"),
        ({"name": "n7", "instruct": "A voice"}, {"audio": ("x.wav", recording(8))}, 400, "Base model"),
        (
            {"name": "n8", "language": "klingon"},
            {"audio": ("x.wav", recording(8))},
            400,
            "not one this model",
        ),
    ],
)
def test_bad_saves_are_clear_400s(base, fields, files, status, needle):
    got, _, body = base.request("POST", "/v1/voices", fields=fields, files=files)
    error = error_of(body)
    assert got == status and needle in error["message"], error
    assert fields["name"] not in base.described()


def test_a_too_large_upload_is_413_before_it_is_read(base):
    huge = b"RIFF" + bytes(21 * 2**20)
    got, _, body = base.request("POST", "/v1/voices/clip", files={"audio": ("big.wav", huge)})
    assert got == 413 and error_of(body)["code"] == "upload_too_large"


def test_the_routes_are_documented(base):
    schema = json.loads(base.request("GET", "/openapi.json", key=None)[2])
    for path in ("/v1/studio", "/v1/voices", "/v1/voices/clip", "/v1/voices/preview", "/v1/voices/{name}"):
        assert path in schema["paths"], path
    assert {"post"} <= set(schema["paths"]["/v1/voices"]) and {"patch", "delete"} <= set(
        schema["paths"]["/v1/voices/{name}"]
    )


# -- the VoiceDesign model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def design(tiny_models, studio_data, tmp_path_factory) -> Iterator[Studio]:
    voices = tmp_path_factory.mktemp("design-voices")
    yield from start_studio(tiny_models["voice_design"], voices, studio_data, "--http-api-key", API_KEY)


def test_a_designed_voice_is_previewed_and_saved(design):
    assert design.json("GET", "/v1/studio")[1]["model_kind"] == "voice_design"
    status, _, body = design.request(
        "POST", "/v1/voices/preview", fields={"instruct": "A deep, slow voice", "input": "Hi."}
    )
    assert status == 200 and wav_info(body)[0] == RATE
    status, saved = design.json(
        "POST", "/v1/voices", fields={"name": "narrator", "instruct": "A deep, slow voice", "language": "de"}
    )
    assert status == 201, saved
    assert saved["voice"]["kind"] == "design" and saved["voice"]["languages"] == ["de"]
    assert json.loads((design.voices / "voices.json").read_text())["voices"] == {
        "narrator": {"instruct": "A deep, slow voice", "language": "de"}
    }
    assert design.described() == ["narrator"]  # the model's own "default" gives way to a configured voice
    status, body = design.json("POST", "/v1/voices", fields={"name": "x"})
    assert status == 400 and body["error"]["param"] == "instruct"
    status, body = design.json(
        "POST", "/v1/voices", fields={"name": "y"}, files={"audio": ("a.wav", recording(8))}
    )
    assert status == 400 and body["error"]["param"] == "audio"


# -- saving off ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyless(tiny_models, voices_dir, studio_data, tmp_path_factory) -> Iterator[Studio]:
    voices = voices_dir_with_hand_written_voices(voices_dir, tmp_path_factory.mktemp("keyless-voices"))
    yield from start_studio(tiny_models["base"], voices, studio_data)


OFF = (
    "Saving voices is off: start the server with --http-api-key KEY (or QWEN3TTS_HTTP_API_KEY) to turn it on"
)


def test_without_a_key_saving_is_off_and_says_so_in_one_line(keyless):
    before = {p.name: p.read_bytes() for p in keyless.voices.iterdir()}
    status, info = keyless.json("GET", "/v1/studio", key=None)
    assert status == 200 and info["writes"] is False and info["why"] == OFF
    refused = [
        keyless.request(
            "POST", "/v1/voices", fields={"name": "x"}, files={"audio": ("a.wav", recording(8))}, key=None
        ),
        keyless.request("PATCH", "/v1/voices/grandpa", json_body={"name": "y"}, key=None),
        keyless.request("DELETE", "/v1/voices/grandpa", key=None),
    ]
    for status, _, body in refused:
        error = error_of(body)
        assert (status, error["code"], error["message"]) == (403, "voice_writes_off", OFF)
    assert {p.name: p.read_bytes() for p in keyless.voices.iterdir()} == before
    assert keyless.process.log().count(OFF) == 1


def test_without_a_key_previews_and_the_openai_client_need_none(keyless):
    status, _, body = keyless.request(
        "POST",
        "/v1/voices/preview",
        fields={"input": "Hi."},
        files={"audio": ("a.wav", recording(8))},
        key=None,
    )
    assert status == 200 and wav_info(body)[0] == RATE
    speech = keyless.client("anything").audio.speech.create(
        model="tts-1", voice="grandpa", input="Hi.", response_format="wav"
    )
    assert wav_info(speech.content)[0] == RATE


# -- the flag ------------------------------------------------------------------------------------


def test_the_trusted_peer_flag_and_its_variable():
    assert parse_settings(["--http-trusted-peer", "172.30.32.2"], {}).http.trusted_peer == "172.30.32.2"
    assert parse_settings([], {"QWEN3TTS_HTTP_TRUSTED_PEER": "::1"}).http.trusted_peer == "::1"
    with pytest.raises(SettingsError, match="--http-trusted-peer 'ingress' must be one IP address"):
        parse_settings(["--http-trusted-peer", "ingress"], {})

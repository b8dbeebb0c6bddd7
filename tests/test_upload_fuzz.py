"""A fuzz of the voice studio's upload route on the real server: truncated, huge, wrong-type, hostile-name
and zip-bomb-like uploads each get a clear 4xx (or, where what is left is still good audio, a saved
voice), and afterwards no earlier voice and nothing of voices.json is lost and the server still speaks.
"""

from __future__ import annotations

import http.client
import io
import json
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import test_voice_studio
from test_voice_studio import API_KEY, multipart, recording, wav_info

from wyoming_qwen3tts.voices.config import read_config

# The studio's Base server with a key, shared with test_voice_studio.py when both run.
base = test_voice_studio.base
studio_data = test_voice_studio.studio_data

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", None),
}


def encoded(kind: str, seconds: float = 8.0, rate: int = 16000, silent: bool = False) -> bytes:
    """A recording in one of the formats; silent ones compress to almost nothing (the zip bombs)."""
    if silent:
        samples = np.zeros(int(seconds * rate), dtype=np.float32)
    else:
        with sf.SoundFile(io.BytesIO(recording(seconds, rate, (0.5, seconds - 0.5)))) as source:
            samples = source.read(dtype="float32")
    buffer = io.BytesIO()
    container, subtype = FORMATS[kind]
    sf.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def wav_header(rate: int, channels: int, bits: int, data_size: int, riff_size: int | None = None) -> bytes:
    block = channels * bits // 8
    riff = 36 + data_size if riff_size is None else riff_size
    return (
        b"RIFF"
        + struct.pack("<I", riff & 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
        + b"data"
        + struct.pack("<I", data_size & 0xFFFFFFFF)
    )


def flac_claiming_hours() -> bytes:
    """A 1 s FLAC whose STREAMINFO says it holds 2^36 - 1 samples (about 50 days at 16 kHz)."""
    data = bytearray(encoded("flac", 1.0))
    assert data[:4] == b"fLaC"
    word = int.from_bytes(data[18:26], "big") | (2**36 - 1)
    data[18:26] = word.to_bytes(8, "big")
    return bytes(data)


def flipped(data: bytes, seed: int, count: int = 24) -> bytes:
    mutated = bytearray(data)
    rng = np.random.default_rng(seed)
    for position in rng.integers(64, len(data), count):
        mutated[position] ^= int(rng.integers(1, 256))
    return bytes(mutated)


def cases() -> list[tuple[str, dict[str, str], bytes, str]]:
    """(label, form fields, audio bytes, filename)."""
    found = []
    for kind in FORMATS:
        whole = encoded(kind)
        for cut in (12, 200, len(whole) // 3):
            found.append((f"{kind} cut at {cut}", {}, whole[:cut], f"take.{kind}"))
        found.append((f"{kind} bit flips", {}, flipped(whole, len(whole)), f"take.{kind}"))
    second = int(16000 * 2)
    found += [
        ("wav claiming 4 GB", {}, wav_header(16000, 1, 16, 0xFFFFFFF0, 0xFFFFFFFF) + bytes(second), "a.wav"),
        ("wav at 1 Hz", {}, wav_header(1, 1, 16, second) + bytes(second), "a.wav"),
        ("wav at 4 GHz", {}, wav_header(4_000_000_000, 1, 16, second) + bytes(second), "a.wav"),
        ("wav with 0 channels", {}, wav_header(16000, 0, 16, second) + bytes(second), "a.wav"),
        ("wav header only", {}, wav_header(16000, 1, 16, 0), "a.wav"),
        ("flac claiming hours", {}, flac_claiming_hours(), "a.flac"),
        (
            "flac of 150 s silence",
            {"start": "1", "end": "5"},
            encoded("flac", 150, 8000, silent=True),
            "a.flac",
        ),
        ("ogg of 150 s silence", {}, encoded("ogg", 150, 8000, silent=True), "a.ogg"),
        ("empty", {}, b"", "a.wav"),
        ("png", {}, b"\x89PNG\r\n\x1a\n" + bytes(2000), "a.png"),
        ("zip", {}, b"PK\x03\x04" + bytes(2000), "a.zip"),
        ("html", {}, b"<!doctype html><script>alert(1)</script>", "a.html"),
        ("elf", {}, b"\x7fELF" + bytes(500), "a.wav"),
        ("m3u8 playlist", {}, b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n", "a.mp3"),
        ("random", {}, np.random.default_rng(3).bytes(50000), "a.mp3"),
        ("random after an Ogg page magic", {}, b"OggS" + np.random.default_rng(4).bytes(50000), "a.ogg"),
        ("random after an MP3 sync", {}, b"\xff\xfb" + np.random.default_rng(5).bytes(50000), "a.mp3"),
        ("mp4 box with nothing in it", {}, struct.pack(">I", 24) + b"ftypisom" + bytes(12), "a.m4a"),
        ("webm magic only", {}, b"\x1a\x45\xdf\xa3" + bytes(100), "a.webm"),
        ("hostile file name", {}, encoded("wav"), "../../../../tmp/studio-pwned.wav"),
        ("nan start", {"start": "nan", "end": "5"}, encoded("wav"), "a.wav"),
        ("infinite end", {"start": "0", "end": "inf"}, encoded("wav"), "a.wav"),
        ("negative start", {"start": "-3", "end": "4"}, encoded("wav"), "a.wav"),
        ("huge number", {"start": "1e309", "end": "1e310"}, encoded("wav"), "a.wav"),
        ("long transcript", {"transcript": "word " * 3000}, encoded("wav"), "a.wav"),
        ("x_vector_only maybe", {"x_vector_only": "maybe"}, encoded("wav"), "a.wav"),
    ]
    return found


HOSTILE_NAMES = [
    "../../etc/passwd",
    "..",
    "%2e%2e%2fescape",
    "a\\b",
    "x\x00y",
    "voices.json/../escape",
    "名前",
    " spaced",
    "con:",
    "a" * 5000,
]


def post(studio, path: str, fields: dict[str, str], files: dict, key: str = API_KEY) -> tuple[int, dict]:
    status, _, body = studio.request("POST", path, fields=fields, files=files, key=key)
    return status, json.loads(body) if body else {}


def raw_post(studio, path: str, body, headers: dict[str, str], chunked: bool = False) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", studio.port, timeout=120)
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={"Authorization": f"Bearer {API_KEY}", **headers},
            encode_chunked=chunked,
        )
        response = connection.getresponse()
        response.read()
        return response.status
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the server closed a body it refused; a 413 may not reach a client still sending
    finally:
        connection.close()


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_fuzzed_uploads_lose_nothing_and_the_server_keeps_serving(base):
    before = snapshot(base.voices)
    voices_before = json.loads(before["voices.json"])["voices"]
    described_before = base.described()
    outcomes: dict[str, int] = {}
    saved = []
    for number, (label, fields, data, filename) in enumerate(cases()):
        name = f"fuzz{number}"
        for path in ("/v1/voices", "/v1/voices/clip"):
            status, body = post(base, path, {"name": name, **fields}, {"audio": (filename, data)})
            outcomes[f"{label} {path}"] = status
            assert status in (200, 201, 400, 413), (label, path, status, body)
            if status >= 400:
                error = body["error"]
                assert set(error) == {"message", "type", "param", "code"} and error["message"], (label, error)
            if status == 201:
                saved.append(name)
    for name in HOSTILE_NAMES:
        status, body = post(base, "/v1/voices", {"name": name}, {"audio": ("a.wav", encoded("wav"))})
        assert status == 400 and body["error"]["code"] == "invalid_voice_name", (name, body)

    # Huge bodies: declared, and streamed without a length.
    huge = b"RIFF" + bytes(40 * 2**20)
    body, content_type = multipart({"name": "huge"}, {"audio": ("big.wav", huge)})
    assert raw_post(base, "/v1/voices", body, {"Content-Type": content_type}) in (413, 0)
    pieces = (body[i : i + 2**20] for i in range(0, len(body), 2**20))
    assert raw_post(base, "/v1/voices", pieces, {"Content-Type": content_type}, chunked=True) in (413, 0)
    small, content_type = multipart({"name": "bigish"}, {"audio": ("big.wav", b"RIFF" + bytes(21 * 2**20))})
    assert raw_post(base, "/v1/voices/clip", small, {"Content-Type": content_type}) == 413
    # Not multipart at all, and a broken one.
    assert raw_post(base, "/v1/voices", b'{"name": "x"}', {"Content-Type": "application/json"}) == 400
    broken = f"multipart/form-data; boundary={uuid.uuid4().hex}"
    assert raw_post(base, "/v1/voices", b"--nonsense\r\n\r\n", {"Content-Type": broken}) == 400
    assert (
        raw_post(base, "/v1/voices/preview", b"\x00" * 1000, {"Content-Type": "multipart/form-data"}) == 400
    )

    print(json.dumps(outcomes, indent=1))  # pytest -s shows what each input got
    assert not Path("/tmp/studio-pwned.wav").exists()
    # Nothing earlier is lost: every file as it was, voices.json readable with every earlier voice.
    after = snapshot(base.voices)
    for file, content in before.items():
        if file != "voices.json":
            assert after[file] == content, file
    config = read_config(base.voices / "voices.json", ("english", "german", "chinese"))
    assert not config.problems
    voices_after = json.loads(after["voices.json"])["voices"]
    assert {k: v for k, v in voices_after.items() if k in voices_before} == voices_before
    assert set(voices_after) == set(voices_before) | set(saved)
    assert not [p for p in base.voices.iterdir() if p.name.startswith(".")]
    # It still serves: describe, the list, speech.
    assert set(described_before) <= set(base.described())
    speech = base.client().audio.speech.create(
        model="tts-1", voice="anna", input="Hi.", response_format="wav"
    )
    assert wav_info(speech.content)[3] > 0
    assert base.request("GET", "/health", key=None)[0] == 200
    log = base.process.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log


@pytest.mark.parametrize("field", ["start", "end"])
def test_a_window_off_the_recording_is_a_clear_400(base, field):
    fields = {"name": "offwindow", "start": "1", "end": "7", field: "999"}
    status, body = post(base, "/v1/voices", fields, {"audio": ("a.wav", encoded("wav"))})
    assert status == 400 and body["error"]["param"] == field, body

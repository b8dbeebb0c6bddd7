"""End to end with --backend openvino: the real server (python -m wyoming_qwen3tts) on loopback, talked to
with the wyoming client, against the PyTorch server on the same tiny models. What the two backends share
(voices, text, SSML, streaming, errors) is tested on both by test_server*.py (conftest's `backend`); here is
what is the OpenVINO backend's own: the export on first start, and audio equal to the PyTorch server's.

One server exports on its first start (--model + --data-dir, no --ov-model-dir); the others serve an
existing export with --ov-model-dir. Greedy decoding and --max-frames make audio a function of text and
voice, so the two backends' audio is compared sample by sample.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerProcess, run_server_command, running_server, snr_db
from test_server import audio_of, describe, is_audio_stop, send
from wyoming.tts import (
    Synthesize,
    SynthesizeVoice,
)

FRAMES = 16
COMMON = ["--greedy", "--no-warmup", "--max-frames", str(FRAMES), "--threads", "1"]
TEXT = "The kitchen light is on. The front door is locked."
EXPORT_TIMEOUT = 900  # an export on first start: about a minute alone, several on a busy machine


def speak(uri: str, text: str, voice: str | None = None) -> np.ndarray:
    event = Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event()
    events = asyncio.run(send(uri, event, until=is_audio_stop))
    assert events[-1].type == "audio-stop", [e.type for e in events]
    return audio_of(events)


@pytest.fixture(scope="module")
def first_start(tiny_models, tmp_path_factory) -> Iterator[tuple[ServerProcess, Path]]:
    """A CustomVoice server with --backend openvino and no --ov-model-dir: it exports on first start."""
    data_dir = tmp_path_factory.mktemp("ov-data")
    args = ["--model", str(tiny_models["custom_voice"]), "--backend", "openvino", "--data-dir", str(data_dir)]
    server = ServerProcess([*args, "--ov-weights", "fp32", *COMMON])
    try:
        server.wait_ready(timeout=EXPORT_TIMEOUT)
        yield server, data_dir / "openvino" / "custom_voice-fp32"
    finally:
        log = server.stop()
        print(log[-3000:])


@pytest.fixture(scope="module")
def pytorch_server(tiny_models) -> Iterator[ServerProcess]:
    args = ["--model", str(tiny_models["custom_voice"]), "--dtype", "float32", "--quantize", "none"]
    with running_server([*args, *COMMON]) as server:
        yield server


def test_first_start_exports_into_the_data_dir(first_start):
    server, export_dir = first_start
    assert (export_dir / "manifest.json").is_file() and (export_dir / "talker.xml").is_file()
    assert not export_dir.with_name(export_dir.name + ".partial").exists()
    assert asyncio.run(describe(server.uri)).tts
    assert "inference precision f32;" in server.log()  # the precision it runs in, stated, on every CPU


def test_describe_lists_the_same_voices_as_pytorch(first_start, pytorch_server):
    server, _ = first_start
    (program,) = asyncio.run(describe(server.uri)).tts
    (expected,) = asyncio.run(describe(pytorch_server.uri)).tts
    assert program.supports_synthesize_streaming is True
    assert [(v.name, v.languages) for v in program.voices] == [(v.name, v.languages) for v in expected.voices]
    assert {"ryan", "vivian", "eric"} <= {v.name for v in program.voices}


@pytest.mark.parametrize("voice", ["ryan", "eric"])
def test_synthesis_is_the_pytorch_servers_audio(first_start, pytorch_server, voice):
    server, _ = first_start
    got = speak(server.uri, TEXT, voice)
    expected = speak(pytorch_server.uri, TEXT, voice)
    assert got.size == expected.size == 2 * FRAMES * 1920  # two sentences, each up to FRAMES frames
    snr = snr_db(expected, got)
    print(f"{voice}: OpenVINO fp32 server vs PyTorch float32 server: SNR {snr:.1f} dB")
    assert snr >= 40


def test_explicit_ov_model_dir_serves_the_export(first_start, pytorch_server, tiny_models):
    _, export_dir = first_start
    args = ["--model", str(tiny_models["custom_voice"]), "--backend", "openvino"]
    with running_server([*args, "--ov-model-dir", str(export_dir), *COMMON]) as server:
        got = speak(server.uri, "Hello.", "vivian")
    assert snr_db(speak(pytorch_server.uri, "Hello.", "vivian"), got) >= 40


def test_base_model_server_clones_the_voices_directory(tiny_models, voices_dir, ov_exports, tmp_path):
    model = ["--model", str(tiny_models["base"]), "--voices-dir", str(voices_dir), *COMMON]
    openvino = ["--backend", "openvino", "--ov-model-dir", str(ov_exports["base", "fp32"])]
    audio = {}
    for backend, extra in (("openvino", openvino), ("pytorch", ["--dtype", "float32", "--quantize", "none"])):
        data_dir = tmp_path / backend  # each its own clone prompt cache: each backend's encoders clone
        with running_server([*model, *extra, "--data-dir", str(data_dir)]) as server:
            voices = {v.name: v for v in asyncio.run(describe(server.uri)).tts[0].voices}
            assert set(voices) == {"anna", "bob"}
            assert voices["anna"].description == "Anna, cloned"
            audio[backend] = {name: speak(server.uri, "Hello.", name) for name in ("anna", "bob")}
    for name in ("anna", "bob"):
        got, expected = audio["openvino"][name], audio["pytorch"][name]
        assert got.size == expected.size > 0 and np.abs(got).max() > 0
        snr = snr_db(expected, got)
        print(f"base/{name}: OpenVINO fp32 server vs PyTorch float32 server: SNR {snr:.1f} dB")
        assert snr >= 40


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ov-model-dir", "{empty}"], "wyoming-qwen3tts-export-openvino --model"),
        (["--ov-model-dir", "{export}", "--ov-device", "NPU9"], "could not compile"),
    ],
)
def test_startup_problems_are_one_clear_line(first_start, tiny_models, tmp_path, args, needle):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["--model", str(tiny_models["custom_voice"]), "--backend", "openvino"]
    argv += [a.replace("{empty}", str(empty)).replace("{export}", str(first_start[1])) for a in args]
    result = run_server_command(argv)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr

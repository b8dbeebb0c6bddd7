"""--compile on the tiny model: the compiled steps give the eager steps' codes, logits and audio and never
compile again once loaded; int8 weights stay uncompiled; and a server started with --compile speaks as one
without, or, where torch.compile cannot build the steps (no C++ compiler), says so and serves uncompiled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK, ServerProcess, assert_logits_agree, snr_db
from test_server import audio_of, is_audio_stop, send
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions
from wyoming_qwen3tts.engine.pytorch.quantize import available_kernels

pytestmark = pytest.mark.usefixtures("single_torch_thread")
TEXT = "Turn on the kitchen light, please."
FRAMES = 10
COMPILE_READY_S = 900  # a first compile on a busy 2-core machine; warm starts take seconds


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    """Inductor's scratch directory for this module's compiles, apart from the user's."""
    return tmp_path_factory.mktemp("torch-compile-cache")


def engine(model_dir: Path, data_dir: Path, **torch_options) -> PyTorchEngine:
    options = EngineOptions(data_dir=data_dir, greedy=True, warmup=False, threads=1)
    return PyTorchEngine(
        model_dir, options, TorchOptions(**{"dtype": "float32", "quantize": "none", **torch_options})
    )


def pcm(engine: PyTorchEngine, text: str, voice_index: int = 0) -> np.ndarray:
    voice = engine.voices()[voice_index]
    return np.frombuffer(b"".join(engine.synthesize(text, voice, "english")), dtype=np.int16)


def test_compiled_steps_match_the_eager_steps_and_never_compile_again(
    tiny_models, compile_cache, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(compile_cache))
    model = tiny_models["custom_voice"]
    eager = engine(model, tmp_path)
    compiled = engine(model, tmp_path, compile=True)
    steps = compiled.parts.steps
    assert "steps compiled" in compiled.parts.description
    for stack in (steps.talker_stack, steps.predictor_stack):
        assert stack.one_token != stack.eager_one_token
    eager_stack = eager.parts.steps.talker_stack
    assert eager_stack.one_token == eager_stack.eager_one_token
    # Loading compiled both steps for every position and cache length: another compile now would be a
    # minutes-long stall in a user's first request.
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)

    prompt = eager.prompt(TEXT, eager.voices()[0], "english")
    codes = torch.stack(list(eager.frame_generator.frames(prompt, FRAMES)))
    assert torch.equal(torch.stack(list(compiled.frame_generator.frames(prompt, FRAMES))), codes)
    expected: list[torch.Tensor] = []
    got: list[torch.Tensor] = []
    list(eager.frame_generator.frames(prompt, FRAMES, forced=codes, record=expected))
    list(compiled.frame_generator.frames(prompt, FRAMES, forced=codes, record=got))
    assert_logits_agree(expected, got, "compiled float32", 0.99999, 0.9999)
    for text, voice in ((TEXT, 0), ("Good night, and sleep well in the big blue bedroom upstairs.", 1)):
        reference = pcm(eager, text, voice)
        audio = pcm(compiled, text, voice)
        assert audio.shape == reference.shape and snr_db(reference, audio) > 40


def test_int8_weights_stay_uncompiled_and_the_log_says_why(tiny_models, tmp_path, caplog):
    if not available_kernels():
        pytest.skip("this torch build has no int8 kernel")
    int8 = engine(tiny_models["custom_voice"], tmp_path, quantize="int8", compile=True)
    assert "not compiled (int8 weights)" in int8.parts.description
    stack = int8.parts.steps.talker_stack
    assert stack.one_token == stack.eager_one_token
    assert "--compile skipped" in caplog.text and "--quantize none" in caplog.text


def speak(server: ServerProcess, text: str) -> np.ndarray:
    wanted = Synthesize(text=text, voice=SynthesizeVoice(name="ryan")).event()
    return audio_of(asyncio.run(send(server.uri, wanted, until=is_audio_stop)))


def serve_and_speak(args: list[str], env: dict[str, str] | None = None) -> tuple[np.ndarray, str]:
    """Start a server, speak TEXT once, stop it: the audio and the server's log."""
    server = ServerProcess(args, env)
    try:
        server.wait_ready(COMPILE_READY_S)
        audio = speak(server, TEXT)
    finally:
        log = server.stop()
    return audio, log


def test_a_server_with_compile_speaks_as_one_without(tiny_models, compile_cache, tmp_path):
    args = ["--model", str(tiny_models["custom_voice"]), "--dtype", "float32", "--quantize", "none"]
    args += [*QUICK, "--data-dir", str(tmp_path)]
    reference, _ = serve_and_speak(args)
    audio, log = serve_and_speak([*args, "--compile"], {"TORCHINDUCTOR_CACHE_DIR": str(compile_cache)})
    assert "Compiled the steps" in log, log
    assert reference.size > 0 and audio.shape == reference.shape and snr_db(reference, audio) > 40


def test_without_a_compiler_the_server_says_so_and_serves_uncompiled(tiny_models, tmp_path):
    args = ["--model", str(tiny_models["custom_voice"]), "--dtype", "float32", "--quantize", "none"]
    args += [*QUICK, "--data-dir", str(tmp_path), "--compile"]
    # An empty cache, so nothing compiled earlier can stand in for the missing compiler.
    env = {"CXX": "/nonexistent/g++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty-cache")}
    audio, log = serve_and_speak(args, env)
    assert "--compile failed, running uncompiled" in log and "C++ compiler" in log, log
    assert "not compiled (compile failed)" in log
    assert audio.size > 0

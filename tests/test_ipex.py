"""The IPEX backend: how it is found and refused, and its fidelity to the pytorch backend on the tiny model.

The fidelity tests need .venv-ipex (script/setup --ipex; run them with script/test-ipex); elsewhere
they are skipped, and only the checks that import no IPEX run.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest
import torch
from conftest import assert_logits_agree, snr_db

from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.ipex import (
    WOQ_INT8,
    IpexPrecision,
    choose_ipex_precision,
    import_ipex,
)
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions, ipex_problem
from wyoming_qwen3tts.requests import EngineError
from wyoming_qwen3tts.settings import Settings, SettingsError, parse_settings

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NO_IPEX = ipex_problem()
needs_ipex = pytest.mark.skipif(NO_IPEX is not None, reason=f"no IPEX here: {NO_IPEX}")
TEXT = "Turn on the kitchen light, please."
FRAMES = 10
AVX2 = frozenset({"avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def installed(packages: dict[str, str]):
    """importlib.metadata.version as if exactly these packages were installed."""

    def version(name: str) -> str:
        if name not in packages:
            raise metadata.PackageNotFoundError(name)
        return packages[name]

    return version


@pytest.mark.parametrize(
    ("packages", "needle"),
    [
        ({"torch": "2.13.0"}, "needs intel-extension-for-pytorch, which runs only on torch 2.8.x"),
        ({"torch": "2.13.0", "intel-extension-for-pytorch": "2.8.0"}, "needs torch 2.8.x"),
    ],
)
def test_without_its_environment_ipex_is_refused_in_one_line_naming_the_fix(monkeypatch, packages, needle):
    monkeypatch.setattr(metadata, "version", installed(packages))
    problem = ipex_problem()
    assert problem and needle in problem and "script/setup --ipex" in problem and "\n" not in problem
    with pytest.raises(SettingsError, match="script/setup --ipex"):
        parse_settings([], environ={"USE_IPEX": "true"})
    with pytest.raises(EngineError, match="script/setup --ipex"):  # checked before IPEX is imported
        import_ipex()


def test_in_its_environment_ipex_is_chosen_by_flag_or_environment(monkeypatch):
    monkeypatch.setattr(
        metadata, "version", installed({"torch": "2.8.0", "intel-extension-for-pytorch": "2.8.0"})
    )
    assert ipex_problem() is None
    assert parse_settings(["--backend", "ipex"], environ={}).backend == "ipex"
    assert parse_settings([], environ={"USE_IPEX": "1"}).backend == "ipex"


def test_a_torch_other_than_2_8_is_refused_before_ipex_is_imported(monkeypatch):
    monkeypatch.setattr(
        metadata, "version", installed({"torch": "2.8.0", "intel-extension-for-pytorch": "2.8.0"})
    )
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    with pytest.raises(EngineError, match="this process runs torch 2.13.0"):
        import_ipex()


def test_precision_follows_what_ipex_can_do_on_the_cpu():
    assert choose_ipex_precision(TorchOptions(), AVX2) == IpexPrecision("float32", "float32", "float32", None)
    with pytest.raises(ValueError, match="--dtype float32"):  # IPEX refuses bf16 prepack without AVX-512
        choose_ipex_precision(TorchOptions(dtype="bfloat16"), AVX2)
    bf16 = choose_ipex_precision(TorchOptions(), AVX512 | {"avx512_bf16"})
    assert (bf16.compute_dtype, bf16.int8_kernel) == ("bfloat16", None)
    # int8 only when asked for: IPEX's weight-only int8 is far slower than its float linears on one token.
    assert choose_ipex_precision(TorchOptions(quantize="auto"), AVX2).int8_kernel is None
    assert choose_ipex_precision(TorchOptions(quantize="int8"), AVX2).int8_kernel == WOQ_INT8
    with pytest.raises(ValueError, match="float16"):
        choose_ipex_precision(TorchOptions(dtype="float16"), AVX2)


def engine(model_dir, backend: str, **torch_options) -> PyTorchEngine:
    from wyoming_qwen3tts.engine.registry import create_engine

    options = EngineOptions(greedy=True, warmup=False, threads=1)
    engine = create_engine(
        Settings(backend=backend, engine=options, torch=TorchOptions(**torch_options)), model_dir
    )
    assert isinstance(engine, PyTorchEngine)
    return engine


@pytest.fixture(scope="module")
def reference(tiny_models):
    """The pytorch backend in float32 (same torch, no IPEX): greedy codes, their logits, the audio."""
    ref = engine(tiny_models["custom_voice"], "pytorch", dtype="float32", quantize="none")
    voice = ref.voices()[0]
    logits: list[torch.Tensor] = []
    prompt = ref.prompt(TEXT, voice, "english")
    codes = torch.stack(list(ref.frame_generator.frames(prompt, FRAMES)))
    list(ref.frame_generator.frames(prompt, FRAMES, forced=codes, record=logits))
    audio = np.frombuffer(b"".join(ref.synthesize(TEXT, voice, "english")), dtype=np.int16)
    return codes, logits, audio


@needs_ipex
def test_ipex_float32_matches_the_pytorch_backend(tiny_models, reference):
    codes, expected, audio = reference
    ipex = engine(tiny_models["custom_voice"], "ipex", dtype="float32", quantize="none")
    assert type(ipex.parts.steps.codec_head).__name__ == "_IPEXLinear"
    assert "IPEX" in ipex.precision.describe()
    prompt = ipex.prompt(TEXT, ipex.voices()[0], "english")
    got_codes = torch.stack(list(ipex.frame_generator.frames(prompt, FRAMES)))
    # Twice the same: the step never computes on an input a fused kernel wrote into (IPEX's traced path did).
    assert torch.equal(got_codes, torch.stack(list(ipex.frame_generator.frames(prompt, FRAMES))))
    assert torch.equal(got_codes, codes)
    got: list[torch.Tensor] = []
    list(ipex.frame_generator.frames(prompt, FRAMES, forced=codes, record=got))
    assert_logits_agree(expected, got, "ipex float32", 0.99999, 0.9999)
    voice = ipex.voices()[0]
    ipex_audio = np.frombuffer(b"".join(ipex.synthesize(TEXT, voice, "english")), dtype=np.int16)
    assert ipex_audio.shape == audio.shape and snr_db(audio, ipex_audio) > 40


@needs_ipex
def test_ipex_weight_only_int8_logits_agree_with_float32(tiny_models, reference):
    codes, expected, _ = reference
    ipex = engine(tiny_models["custom_voice"], "ipex", dtype="float32", quantize="int8")
    assert ipex.precision.int8_kernel == WOQ_INT8
    got: list[torch.Tensor] = []
    prompt = ipex.prompt(TEXT, ipex.voices()[0], "english")
    list(ipex.frame_generator.frames(prompt, FRAMES, forced=codes, record=got))
    assert_logits_agree(expected, got, "ipex weight-only int8", 0.995, 0.97)


@needs_ipex
def test_compile_is_skipped_on_the_ipex_backend(tiny_models, caplog):
    """--compile is the pytorch backend's: IPEX's own linears stay as they are, and the log says so."""
    ipex = engine(tiny_models["custom_voice"], "ipex", dtype="float32", quantize="none", compile=True)
    assert "not compiled (ipex)" in ipex.parts.description
    assert ipex.parts.steps.talker_stack.one_token == ipex.parts.steps.talker_stack.eager_one_token
    assert "--compile skipped" in caplog.text


@needs_ipex
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ipex_traced_steps_compute_what_its_eager_steps_compute(tiny_models, dtype):
    """Traced steps (engine/pytorch/traced_steps.py) with IPEX's linears: the same logits as eager, frame
    after frame (with TorchScript's executor optimising a recording, IPEX's passes broke its cache writes)."""
    from wyoming_qwen3tts.engine.pytorch.ipex import ipex_bf16_prepack

    if dtype == "bfloat16" and not ipex_bf16_prepack():
        pytest.skip("IPEX's bf16 linears need AVX-512 or AVX-NE-CONVERT")
    eager = engine(tiny_models["custom_voice"], "ipex", dtype=dtype, quantize="none", trace_steps=False)
    traced = engine(tiny_models["custom_voice"], "ipex", dtype=dtype, quantize="none")
    assert "steps traced" in traced.parts.description
    prompt = eager.prompt(TEXT, eager.voices()[0], "english")
    codes = torch.stack(list(eager.frame_generator.frames(prompt, FRAMES)))
    expected: list[torch.Tensor] = []
    got: list[torch.Tensor] = []
    list(eager.frame_generator.frames(prompt, FRAMES, forced=codes, record=expected))
    list(traced.frame_generator.frames(prompt, FRAMES, forced=codes, record=got))
    assert len(got) == len(expected) == 16 * len(codes)  # the logits of every codebook, frame by frame
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))

"""Lower-precision paths agree with float32: logits compared along the same (teacher-forced) codes."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_logits_agree

from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.options import INT8_KERNELS, TorchOptions
from wyoming_qwen3tts.engine.pytorch.precision import Precision, choose_precision
from wyoming_qwen3tts.engine.pytorch.quantize import KERNELS, available_kernels

TEXT = "Turn on the kitchen light, please."
FRAMES = 10


def engine(model_dir, **torch_options) -> PyTorchEngine:
    return PyTorchEngine(model_dir, EngineOptions(greedy=True, warmup=False), TorchOptions(**torch_options))


@pytest.fixture(scope="module")
def reference(tiny_models):
    """float32 codes and logits along greedy decoding."""
    ref = engine(tiny_models["custom_voice"], dtype="float32", quantize="none")
    voice = ref.voices()[0]
    logits: list[torch.Tensor] = []
    prompt = ref.prompt(TEXT, voice, "english")
    codes = torch.stack(list(ref.frame_generator.frames(prompt, FRAMES)))
    list(ref.frame_generator.frames(prompt, FRAMES, forced=codes, record=logits))
    return codes, logits


# (settings, kernel it needs, mean cosine at least, worst cosine at least)
CASES = [
    ({"dtype": "bfloat16", "quantize": "none"}, None, 0.999, 0.99),
    ({"dtype": "float32", "quantize": "int8", "int8_kernel": "packed"}, "packed", 0.995, 0.97),
    ({"dtype": "float32", "quantize": "int8", "int8_kernel": "dynamic"}, "dynamic", 0.995, 0.97),
]


@pytest.mark.parametrize(("settings", "kernel", "mean_min", "worst_min"), CASES)
def test_teacher_forced_logits_agree_with_float32(
    tiny_models, reference, settings, kernel, mean_min, worst_min
):
    if kernel and kernel not in available_kernels():
        pytest.skip(f"this torch build has no {kernel} int8 kernel")
    codes, expected = reference
    other = engine(tiny_models["custom_voice"], **settings)
    got: list[torch.Tensor] = []
    prompt = other.prompt(TEXT, other.voices()[0], "english")
    list(other.frame_generator.frames(prompt, FRAMES, forced=codes, record=got))
    assert len(expected) == FRAMES * 16
    assert_logits_agree(expected, got, str(settings), mean_min, worst_min)


def test_weight_only_int8_kernel_matches_float(tiny_models, reference):
    from wyoming_qwen3tts.engine.pytorch.quantize import WeightOnlyInt8Linear

    layer = torch.nn.Linear(64, 48)
    x = torch.randn(3, 64)
    out = WeightOnlyInt8Linear(layer)(x)
    assert torch.nn.functional.cosine_similarity(out.flatten(), layer(x).flatten(), dim=0) > 0.999


def test_auto_precision_follows_the_cpu():
    built = choose_precision(TorchOptions(), native_bf16=False, kernels=["packed", "dynamic", "weight-only"])
    assert built == Precision("bfloat16", "float32", "float32", "packed")
    avx2 = choose_precision(TorchOptions(), native_bf16=False, kernels=["dynamic", "weight-only"])
    assert avx2 == Precision("bfloat16", "float32", "float32", "dynamic")
    pinned = choose_precision(
        TorchOptions(int8_kernel="dynamic"), native_bf16=False, kernels=["packed", "dynamic"]
    )
    assert pinned.int8_kernel == "dynamic"
    with pytest.raises(ValueError, match="--int8-kernel packed does not run here"):
        choose_precision(TorchOptions(int8_kernel="packed"), native_bf16=False, kernels=["dynamic"])
    bf16 = choose_precision(TorchOptions(), native_bf16=True, kernels=["dynamic"])
    assert bf16.int8_kernel == "dynamic" and bf16.codec_dtype == "bfloat16"
    plain = choose_precision(TorchOptions(quantize="none"), native_bf16=False, kernels=["dynamic"])
    assert plain == Precision("float32", "float32", "float32", None)
    no_kernel = choose_precision(TorchOptions(), native_bf16=False, kernels=[])
    assert no_kernel.int8_kernel is None
    with pytest.raises(ValueError, match="no int8 kernel"):
        choose_precision(TorchOptions(quantize="int8"), native_bf16=False, kernels=[])


def test_the_int8_kernel_flag_names_every_kernel():
    """options.py, which imports no torch, lists quantize.py's kernels by name for --int8-kernel."""
    assert INT8_KERNELS == ("auto", *KERNELS)

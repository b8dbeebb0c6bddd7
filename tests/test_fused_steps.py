"""Fused one-token steps (engine/pytorch/fused_steps.py, the op qwen3tts::int8_step of int8_kernel.cpp).

On the tiny model loaded through the real path with our packed int8 layers: the fused step returns and
writes into the caches what the eager step does, within float rounding (its sums run in another order,
so an activation on a rounding boundary of the int8 quantization may land on the other side: the bound
is loose enough for that, tight enough for any wrong head, position or norm); a row gives the same bits
alone or among others; the AVX2 and plain C++ paths give the same bits; where the stacks cannot be fused
(float weights, --no-fused-steps) the traced steps run, and a model fused speaks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_traced_steps import copied, filled_cache

from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch import int8_kernel
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.fused_steps import FusedStep, fusable
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions
from wyoming_qwen3tts.engine.pytorch.quantize import available_kernels
from wyoming_qwen3tts.engine.pytorch.steps import DecoderStack, KVCache

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def load(model_dir, tmp_path, quantize="int8", fused=True) -> PyTorchEngine:
    if quantize == "int8" and "packed" not in available_kernels():
        pytest.skip("our int8 kernel does not build here")
    options = EngineOptions(greedy=True, warmup=False, max_frames=16, data_dir=tmp_path)
    torch_options = TorchOptions(dtype="float32", quantize=quantize, int8_kernel="packed", fused_steps=fused)
    if quantize != "int8":
        torch_options = TorchOptions(dtype="float32", quantize=quantize, fused_steps=fused)
    return PyTorchEngine(model_dir, options, torch_options)


@pytest.fixture(scope="module")
def engine(tiny_models, tmp_path_factory) -> PyTorchEngine:
    return load(tiny_models["custom_voice"], tmp_path_factory.mktemp("fused"))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within float rounding and the odd int8 rounding flip it causes (module docstring)."""
    a, b = a.flatten().double(), b.flatten().double()
    return bool(F.cosine_similarity(a, b, dim=0) > 0.9999 and (a - b).abs().max() < 0.05 * b.abs().max())


def fused_and_eager(stack: DecoderStack, step, caches: list[KVCache]):
    """step(caches) fused, and eagerly on copies of the caches: (fused out, caches, eager out, caches)."""
    eager_caches = [copied(c) for c in caches]
    fused = stack.fused
    try:
        stack.fused = None
        stack.on_views, traced = stack.eager_on_views, stack.on_views
        eager = step(eager_caches)
    finally:
        stack.fused, stack.on_views = fused, traced
    return step(caches), caches, eager, eager_caches


def test_fused_steps_write_and_return_what_the_eager_steps_do(engine):
    steps = engine.frame_generator.steps
    talker, predictor = steps.talker_stack, steps.predictor_stack
    assert isinstance(talker.fused, FusedStep) and isinstance(predictor.fused, FusedStep)
    width = talker.layers[0].input_norm.width
    small = predictor.layers[0].input_norm.width
    inputs = torch.randn(3, 1, width, generator=torch.Generator().manual_seed(1))
    rows = torch.randn(3, 1, small, generator=torch.Generator().manual_seed(6))
    cases = [
        # One talker row at position 7 of its cache; three at their own positions of their own caches.
        (talker, lambda c: talker.forward(inputs[:1], 7, c[0]), [filled_cache(talker, 12, 1, 2)], [7]),
        (
            talker,
            lambda c: talker.rows_one_token(inputs, [3, 9, 0], c),
            [filled_cache(talker, 12, 1, seed) for seed in (3, 4, 5)],
            [3, 9, 0],
        ),
        # Three predictor rows of one cache at one position (the batched predictor step).
        (predictor, lambda c: predictor.forward(rows, 4, c[0]), [filled_cache(predictor, 17, 3, 7)], [4]),
    ]
    with torch.inference_mode():
        for stack, step, caches, positions in cases:
            before = [copied(c) for c in caches]
            fused, caches, eager, eager_caches = fused_and_eager(stack, step, caches)
            assert fused.shape == eager.shape and close(fused, eager)
            for cache, expected, old in zip(caches, eager_caches, before, strict=True):
                for got, want, was in zip(
                    (*cache.keys, *cache.values),
                    (*expected.keys, *expected.values),
                    (*old.keys, *old.values),
                    strict=True,
                ):
                    assert close(got, want)
                    # The step wrote its position, nothing else: the comparison above could fail.
                    written = (got != was).any(dim=(0, 1, 3)).nonzero().flatten().tolist()
                    assert set(written) <= set(positions) and written
        # A frame's first predictor step (two tokens a row) is not the fused op's: it runs as before.
        pairs = torch.randn(1, 2, small, generator=torch.Generator().manual_seed(8))
        fused, _, eager, _ = fused_and_eager(
            predictor, lambda c: predictor.forward(pairs, 0, c[0]), [filled_cache(predictor, 17, 1, 9)]
        )
        assert torch.equal(fused, eager)


def test_a_row_is_the_same_alone_or_among_others_on_every_path(engine):
    talker = engine.frame_generator.steps.talker_stack
    width = talker.layers[0].input_norm.width
    inputs = torch.randn(3, 1, width, generator=torch.Generator().manual_seed(2))
    starts = [5, 2, 8]
    results = {}
    before = int8_kernel.set_isa("avx512-vnni")
    try:
        for path in ("avx512-vnni", "avx2", "scalar"):  # this CPU's best at or below each
            int8_kernel.set_isa(path)
            with torch.inference_mode():
                caches = [filled_cache(talker, 12, 1, seed) for seed in (3, 4, 5)]
                together = talker.rows_one_token(inputs, starts, caches)
                for row in range(3):
                    cache = filled_cache(talker, 12, 1, 3 + row)
                    alone = talker.rows_one_token(inputs[row : row + 1], starts[row : row + 1], [cache])
                    assert torch.equal(alone[0], together[row])
                    assert all(torch.equal(a, b) for a, b in zip(cache.keys, caches[row].keys, strict=True))
            results[path] = together
    finally:
        int8_kernel.set_isa(before)
    assert torch.equal(results["avx2"], results["scalar"])
    assert torch.equal(results["avx512-vnni"], results["scalar"])


def test_the_op_refuses_what_it_cannot_step(engine):
    talker = engine.frame_generator.steps.talker_stack
    width = talker.layers[0].input_norm.width
    x = torch.zeros(1, 1, width)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside the rotary table"):
        talker.fused.one_cache(x, talker.cos.shape[0], filled_cache(talker, 4, 1, 1))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside its cache"):
        talker.fused.one_cache(x, 4, filled_cache(talker, 4, 1, 1))
    cache = filled_cache(talker, 4, 1, 1)
    # A list of weights that is not 15 a layer and a final norm (none at all) is refused, not read.
    with torch.inference_mode(), pytest.raises(RuntimeError, match="15 a layer"):
        torch.ops.qwen3tts.int8_step(
            x[0], [x[0, 0]], [0.0], [2, 1, 2, 2], talker.cos, talker.signed_sin,
            cache.keys, cache.values, [0], [0], [0], 1.0,
        )  # fmt: skip


def test_float_weights_and_no_fused_steps_keep_the_traced_steps(tiny_models, tmp_path, engine):
    plain = load(tiny_models["custom_voice"], tmp_path, quantize="none")
    assert plain.frame_generator.steps.talker_stack.fused is None
    assert "packed int8" in fusable(plain.frame_generator.steps.talker_stack)
    unfused = load(tiny_models["custom_voice"], tmp_path, fused=False)
    assert unfused.frame_generator.steps.talker_stack.fused is None
    assert "fused" not in unfused.parts.description
    assert "one-token steps fused" in engine.parts.description
    # Fused, the model speaks what the traced steps speak, but for rounding.
    voice = engine.voices()[0]
    got = torch.stack(list(engine.frames("Good morning.", voice, "english")))
    expected = torch.stack(list(unfused.frames("Good morning.", voice, "english")))
    assert got.shape[1:] == expected.shape[1:] and got.shape[0] > 0
    agreed = (got[: len(expected)] == expected[: len(got)]).float().mean()
    assert agreed > 0.5, agreed  # random tiny weights: codes near a tie may go either way

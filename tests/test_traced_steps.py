"""Traced one-token steps (engine/pytorch/traced_steps.py) compute exactly what the eager steps compute.

On the tiny model loaded through the real path, float32 and int8 weights: the talker alone, the talker
with three rows at their own positions in their own caches, the predictor with three rows of one cache
and a frame's first predictor step (two tokens a row);
hidden states and every cache written bit for bit equal to the eager step's. One recording per shape,
made on its first call; should tracing fail, the steps stay eager and still speak.
"""

from __future__ import annotations

import logging

import pytest
import torch

from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions
from wyoming_qwen3tts.engine.pytorch.quantize import available_kernels
from wyoming_qwen3tts.engine.pytorch.steps import DecoderStack, KVCache
from wyoming_qwen3tts.engine.pytorch.traced_steps import TracedHead, TracedViews

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def load(model_dir, tmp_path, quantize="none", trace=True, int8_kernel="auto") -> PyTorchEngine:
    """quantize "int8" with the first int8 kernel available, or one named (skipped where it cannot run)."""
    kernels = available_kernels()
    if quantize == "int8" and (int8_kernel not in kernels if int8_kernel != "auto" else not kernels):
        pytest.skip(f"int8 kernel {int8_kernel} does not run here")
    options = EngineOptions(greedy=True, warmup=False, max_frames=16, data_dir=tmp_path)
    # Not fused (fused_steps.py, its own tests): the one-token steps here are the traced ones.
    torch_options = TorchOptions(
        dtype="float32", quantize=quantize, trace_steps=trace, int8_kernel=int8_kernel, fused_steps=False
    )
    return PyTorchEngine(model_dir, options, torch_options)


# The op each int8 kernel's layers run, as a recording holds it.
INT8_OPS = {"packed": "qwen3tts::int8_linear", "dynamic": "quantized::linear_dynamic"}


def filled_cache(stack: DecoderStack, max_len: int, rows: int, seed: int) -> KVCache:
    generator = torch.Generator().manual_seed(seed)
    cache = stack.new_cache(max_len, rows)
    for cached in (*cache.keys, *cache.values):
        cached.copy_(torch.randn(cached.shape, generator=generator))
    return cache


def copied(cache: KVCache) -> KVCache:
    return KVCache([k.clone() for k in cache.keys], [v.clone() for v in cache.values])


def same_caches(a: list[KVCache], b: list[KVCache]) -> bool:
    return all(
        torch.equal(x, y)
        for c, d in zip(a, b, strict=True)
        for x, y in zip((*c.keys, *c.values), (*d.keys, *d.values), strict=True)
    )


def eager_and_traced(stack: DecoderStack, step, caches: list[KVCache]):
    """Run step(caches) eagerly and traced on copies of the same caches: (outputs, caches) of each."""
    assert isinstance(stack.on_views, TracedViews)
    traced_views = stack.on_views
    eager_caches = [copied(c) for c in caches]
    try:
        stack.on_views = stack.eager_on_views
        eager = step(eager_caches)
    finally:
        stack.on_views = traced_views
    # The first call records, the others replay: past the first replays, TorchScript's executor would
    # optimise the recording (with IPEX loaded its passes broke the cache writes), so several are checked.
    outputs = [step(caches) for _ in range(5)]
    assert all(torch.equal(outputs[0], out) for out in outputs[1:])
    return eager, eager_caches, outputs[-1], caches


@pytest.mark.parametrize("kernel", ["none", "packed", "dynamic"])
def test_traced_steps_write_and_return_what_the_eager_steps_do(tiny_models, tmp_path, kernel):
    quantize, int8_kernel = ("none", "auto") if kernel == "none" else ("int8", kernel)
    engine = load(tiny_models["custom_voice"], tmp_path, quantize, int8_kernel=int8_kernel)
    steps = engine.frame_generator.steps
    talker, predictor = steps.talker_stack, steps.predictor_stack
    width = talker.layers[0].input_norm.width
    inputs = torch.randn(3, 1, width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        # One row at position 7 of its own cache.
        eager, eager_caches, traced, caches = eager_and_traced(
            talker, lambda c: talker.forward(inputs[:1], 7, c[0]), [filled_cache(talker, 12, 1, 2)]
        )
        assert torch.equal(eager, traced) and same_caches(eager_caches, caches)
        # Three rows, each at its own position of its own cache (the batched talker step).
        starts = [3, 9, 5]
        eager, eager_caches, traced, caches = eager_and_traced(
            talker,
            lambda c: talker.rows_one_token(inputs, starts, c),
            [filled_cache(talker, 12, 1, seed) for seed in (3, 4, 5)],
        )
        assert torch.equal(eager, traced) and same_caches(eager_caches, caches)
        # Three rows of one cache at one position (the batched predictor step), and one row of it.
        small = predictor.layers[0].input_norm.width
        rows = torch.randn(3, 1, small, generator=torch.Generator().manual_seed(6))
        for count in (3, 1):
            eager, eager_caches, traced, caches = eager_and_traced(
                predictor,
                lambda c, count=count: predictor.forward(rows[:count], 4, c[0]),
                [filled_cache(predictor, 17, count, 7)],
            )
            assert torch.equal(eager, traced) and same_caches(eager_caches, caches)
        # The step changed what it wrote: the comparison above could fail.
        assert not torch.equal(caches[0].keys[0][:, :, 4], filled_cache(predictor, 17, 1, 7).keys[0][:, :, 4])
        # A frame's first predictor step: two tokens for each of three rows, from the start of their cache.
        pairs = torch.randn(3, 2, small, generator=torch.Generator().manual_seed(8))
        eager, eager_caches, traced, caches = eager_and_traced(
            predictor, lambda c: predictor.forward(pairs, 0, c[0]), [filled_cache(predictor, 17, 3, 9)]
        )
        assert torch.equal(eager, traced) and same_caches(eager_caches, caches)
        # A talker prompt (its length new with every sentence) runs eagerly: nothing recorded for it.
        prompt = torch.randn(1, 9, width, generator=torch.Generator().manual_seed(10))
        talker.forward(prompt, 0, filled_cache(talker, 12, 1, 11))
    # One recording per shape: the talker's one row and three rows; the predictor's three rows and one,
    # and three rows of two tokens.
    assert len(talker.on_views._recordings) == 2
    assert len(predictor.on_views._recordings) == 3
    # Flattened: the linears' operations run in the step's own graph, not as calls into theirs.
    for recording in (*talker.on_views._recordings.values(), *predictor.on_views._recordings.values()):
        kinds = {node.kind() for node in recording.graph.nodes()}
        assert "prim::CallMethod" not in kinds
        assert INT8_OPS.get(kernel, "aten::linear") in kinds


def test_each_shape_is_recorded_once_whatever_the_position(tiny_models, tmp_path, monkeypatch):
    steps = load(tiny_models["custom_voice"], tmp_path).frame_generator.steps
    talker = steps.talker_stack
    traces = []
    real_trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: traces.append(1) or real_trace(*a, **k))
    width = talker.layers[0].input_norm.width
    with torch.inference_mode():
        cache = filled_cache(talker, 40, 1, 8)
        eager = copied(cache)
        x = torch.randn(1, 1, width)
        for position in range(5, 35, 3):  # the cache views grow: one recording serves every length
            got = talker.forward(x, position, cache)
            talker.on_views, traced_views = talker.eager_on_views, talker.on_views
            expected = talker.forward(x, position, eager)
            talker.on_views = traced_views
            assert torch.equal(got, expected)
    assert traces == [1]


def test_steps_stay_eager_and_speak_when_tracing_fails(tiny_models, tmp_path, monkeypatch, caplog):
    plain = load(tiny_models["custom_voice"], tmp_path, trace=False)
    voice = plain.voices()[0]
    expected = torch.stack(list(plain.frames("Good morning.", voice, "english")))
    engine = load(tiny_models["custom_voice"], tmp_path)

    def refuse(*args, **kwargs):
        raise RuntimeError("tracing is not available here")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    with caplog.at_level(logging.WARNING):
        got = torch.stack(list(engine.frames("Good morning.", voice, "english")))
    assert torch.equal(got, expected)
    stack = engine.frame_generator.steps.talker_stack
    assert "tracing is not available here" in stack.on_views.failed
    warnings = [r.getMessage() for r in caplog.records if "untraced" in r.getMessage()]
    assert len(warnings) == 2  # once for the talker, once for the code predictor
    assert "tracing is not available here" in warnings[0]


def test_no_trace_steps_leaves_the_steps_eager(tiny_models, tmp_path):
    engine = load(tiny_models["custom_voice"], tmp_path, trace=False)
    steps = engine.frame_generator.steps
    assert steps.talker_stack.on_views == steps.talker_stack.eager_on_views
    assert steps.predictor_stack.on_views == steps.predictor_stack.eager_on_views
    assert "traced" not in engine.parts.description
    traced = load(tiny_models["custom_voice"], tmp_path)
    assert isinstance(traced.frame_generator.steps.talker_stack.on_views, TracedViews)
    assert "steps traced" in traced.parts.description


def test_warmup_records_every_batch_size_so_requests_that_meet_record_nothing(
    tiny_models, tmp_path, monkeypatch
):
    engine = load(tiny_models["custom_voice"], tmp_path)
    engine.warmup(rows=3)
    steps = engine.frame_generator.steps
    recorded = (len(steps.talker_stack.on_views._recordings), len(steps.predictor_stack.on_views._recordings))
    # Talker: one row, two and three rows in their own caches; predictor: 1-3 rows, of one and two tokens.
    assert recorded == (3, 6)

    def refuse(*args, **kwargs):
        raise AssertionError("a step was recorded after the warm-up")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    voice = engine.voices()[0]
    # Texts of different lengths end at different frames: three rows, then two, then one.
    texts = [
        "Good morning.",
        "Turn on the kitchen light, please.",
        "The front door is locked and the alarm is set.",
    ]
    streams = engine.start_many([(text, voice, "english") for text in texts])
    while any(not stream.done for stream in streams):
        engine.advance([stream for stream in streams if not stream.done])
    assert steps.talker_stack.on_views.failed is None
    assert steps.predictor_stack.on_views.failed is None


@pytest.mark.parametrize("kernel", ["none", "packed", "dynamic"])
def test_traced_heads_give_the_eager_heads_logits(tiny_models, tmp_path, kernel):
    """The talker's and predictor's heads are recorded for one row at load and give the eager head's
    logits bit for bit; several rows run eagerly and record nothing."""
    quantize, int8_kernel = ("none", "auto") if kernel == "none" else ("int8", kernel)
    steps = load(
        tiny_models["custom_voice"], tmp_path, quantize, int8_kernel=int8_kernel
    ).frame_generator.steps
    heads = [steps.codec_head, *steps.predictor_heads]
    assert all(isinstance(head.forward, TracedHead) for head in heads)
    assert [len(head.forward._recordings) for head in heads] == [2] + [1] * len(steps.predictor_heads)
    generator = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        for head in heads:
            eager = type(head).forward
            shapes = [(1, head.in_features), (3, head.in_features)]
            if head is steps.codec_head:
                shapes.append((head.in_features,))  # a prompt's last position
            for shape in shapes:
                x = torch.randn(shape, generator=generator)
                assert torch.equal(head(x), eager(head, x))
            assert len(head.forward._recordings) == (2 if head is steps.codec_head else 1)


def test_heads_stay_eager_and_speak_when_tracing_fails(tiny_models, tmp_path, monkeypatch, caplog):
    plain = load(tiny_models["custom_voice"], tmp_path, trace=False)
    voice = plain.voices()[0]
    expected = torch.stack(list(plain.frames("Good morning.", voice, "english")))

    def refuse(*args, **kwargs):
        raise RuntimeError("tracing is not available here")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    with caplog.at_level(logging.WARNING):
        engine = load(tiny_models["custom_voice"], tmp_path)
        got = torch.stack(list(engine.frames("Good morning.", voice, "english")))
    assert torch.equal(got, expected)
    assert "tracing is not available here" in engine.frame_generator.steps.codec_head.forward.failed
    assert any("A head runs untraced" in r.getMessage() for r in caplog.records)

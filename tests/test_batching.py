"""Continuous batching in the engine: rows of a batch compute what they compute alone.

A batched talker step runs every utterance's projections and MLP in one call (one read of the
weights) and attention row by row; the 15 predictor steps of a frame run all rows at once; the prompts
of sentences that join at the same frame run through the talker as one step (their tokens one after
another, attention within each prompt). On the tiny
models of every kind: greedy float32 codes of each row equal the same sentence run alone, with rows of
different lengths joining and leaving mid-way; teacher-forced logits agree within float32 rounding,
for float32 and int8 weights (an int8 linear quantizes every row with its own scale, so its rows are bit
for bit their solo results; what differs is the rounding of batched float ops around it). The max abs
differences are printed (pytest -s).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_server import same_audio

from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions
from wyoming_qwen3tts.engine.pytorch.quantize import PINNED_ROWS_KEPT, DynamicInt8Linear, available_kernels

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEXTS = [
    "Turn on the kitchen light, please.",
    "Good morning.",
    "The front door is locked and the alarm is set for the night.",
]
# (kind, voice) per kind of checkpoint: a preset speaker, an in-context clone, a designed voice.
KINDS = [("custom_voice", "ryan"), ("base", "anna"), ("voice_design", None)]


def load(model_dir, voices_dir, tmp_path, quantize="none", max_frames=24) -> PyTorchEngine:
    options = EngineOptions(
        greedy=True, warmup=False, max_frames=max_frames, voices_dir=voices_dir, data_dir=tmp_path
    )
    return PyTorchEngine(model_dir, options, TorchOptions(dtype="float32", quantize=quantize))


def alone(engine: PyTorchEngine, text: str, voice) -> torch.Tensor:
    return torch.stack(list(engine.frames(text, voice, "english")))


def batched(engine: PyTorchEngine, texts: list[str], voice, joins: list[int]) -> list[torch.Tensor]:
    """Run the texts as rows of one batch; row i joins once `joins[i]` frames of the batch have run (rows
    joining at the same frame start together: their prompts in one talker step)."""
    generator = engine.frame_generator
    rows: list = [None] * len(texts)
    frames: list[list[torch.Tensor]] = [[] for _ in texts]
    tick = 0
    while tick == 0 or any(row is None or not row.done for row in rows):
        joining = [i for i, text in enumerate(texts) if rows[i] is None and joins[i] <= tick]
        started = generator.start_rows(
            [engine.prompt(texts[i], voice, "english") for i in joining],
            [engine.frame_cap(texts[i]) for i in joining],
        )
        for index, row in zip(joining, started, strict=True):
            rows[index] = row
        active = [row for row in rows if row is not None and not row.done]
        if active:
            for row, frame in zip(active, generator.advance(active), strict=True):
                if frame is not None:
                    frames[rows.index(row)].append(frame)
        tick += 1
        assert tick < 200
    return [torch.stack(f) for f in frames]


@pytest.mark.parametrize(("kind", "voice_name"), KINDS)
def test_greedy_codes_of_each_row_equal_the_row_alone(tiny_models, voices_dir, tmp_path, kind, voice_name):
    engine = load(tiny_models[kind], voices_dir if kind == "base" else None, tmp_path)
    voice = next(v for v in engine.voices() if voice_name is None or v.name == voice_name)
    expected = [alone(engine, text, voice) for text in TEXTS]
    # Different lengths: the middle one ends early; the last joins after 5 frames, the second after 2.
    # Then the first two start together (one talker step for both prompts), the last after 2 frames.
    for joins in ([0, 2, 5], [0, 0, 2]):
        got = batched(engine, TEXTS, voice, joins=joins)
        for want, have in zip(expected, got, strict=True):
            assert have.shape == want.shape and torch.equal(have, want), joins


@pytest.mark.parametrize("joined", [False, True])  # prompts run alone, or all three in one step
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_teacher_forced_logits_of_a_row_match_it_alone(tiny_models, tmp_path, quantize, joined):
    if quantize == "int8" and "dynamic" not in available_kernels():
        pytest.skip("this torch build has no dynamic int8 kernel")
    engine = load(tiny_models["custom_voice"], None, tmp_path, quantize=quantize)
    voice = engine.voices()[0]
    generator = engine.frame_generator
    prompts = [engine.prompt(text, voice, "english") for text in TEXTS]
    codes = [torch.stack(list(generator.frames(prompt, 12))) for prompt in prompts]
    solo: list[list[torch.Tensor]] = [[] for _ in prompts]
    for prompt, forced, record in zip(prompts, codes, solo, strict=True):
        list(generator.frames(prompt, 12, forced=forced, record=record))
    together: list[list[torch.Tensor]] = [[] for _ in prompts]
    if joined:
        rows = generator.start_rows(prompts, [len(c) for c in codes])
        for row, forced, record in zip(rows, codes, together, strict=True):
            row.forced, row.record = forced, record
    else:
        rows = [
            generator.start(p, 12, forced=c, record=r)
            for p, c, r in zip(prompts, codes, together, strict=True)
        ]
    while any(not row.done for row in rows):
        generator.advance([row for row in rows if not row.done])
    pairs = [(a, b) for x, y in zip(solo, together, strict=True) for a, b in zip(x, y, strict=True)]
    assert all(torch.equal(torch.isinf(a), torch.isinf(b)) for a, b in pairs)  # the same masked ids
    worst = max((a - b)[torch.isfinite(a)].abs().max().item() for a, b in pairs)
    print(
        f"{quantize}, prompts joined {joined}: max abs logit difference, batched against alone: {worst:.2e}"
    )
    assert [len(r) for r in together] == [len(r) for r in solo]
    assert worst < 1e-4  # float32 rounding (measured 6.7e-06 float32, 4.8e-07 int8 on the tiny model)


def test_int8_rows_are_quantized_with_their_own_scale():
    torch.manual_seed(0)
    layer = DynamicInt8Linear(torch.nn.Linear(64, 48))
    x = torch.randn(4, 64) * torch.tensor([[1e-3], [1.0], [50.0], [0.2]])  # very different magnitudes
    together = layer(x)
    each = torch.cat([layer(x[i : i + 1]) for i in range(4)])
    assert torch.equal(together, each)
    reference = torch.nn.functional.linear(x, layer_weight(layer), layer.bias)
    relative = (together - reference).norm(dim=1) / reference.norm(dim=1)
    assert relative.max() < 0.05  # the small row is as exact as the large one


def test_int8_layers_keep_input_buffers_only_for_the_small_row_counts_of_steps():
    """A prompt's rows (its tokens) vary in number from request to request: a buffer kept per count
    would grow the server by 0.8 MB a token of every new prompt length, for good."""
    layer = DynamicInt8Linear(torch.nn.Linear(64, 48))
    for rows in (1, 4, PINNED_ROWS_KEPT, PINNED_ROWS_KEPT + 1, 57, 300):
        x = torch.randn(rows, 64)
        assert torch.equal(layer(x), torch.cat([layer(x[i : i + 1]) for i in range(rows)]))
    assert sorted(layer._pinned) == [1, 4, PINNED_ROWS_KEPT]


def layer_weight(layer: DynamicInt8Linear) -> torch.Tensor:
    weight, _ = torch.ops.quantized.linear_unpack(layer._packed)
    return weight.dequantize()[:, : layer.in_features]


def test_a_row_that_ends_leaves_the_others_unchanged(tiny_models, tmp_path):
    engine = load(tiny_models["custom_voice"], None, tmp_path, max_frames=6)
    voice = engine.voices()[0]
    short, long = "Hi.", TEXTS[2]
    generator = engine.frame_generator
    rows = [
        generator.start(engine.prompt(short, voice, "english"), 3),
        generator.start(engine.prompt(long, voice, "english"), 6),
    ]
    produced = [0, 0]
    while not all(row.done for row in rows):
        active = [row for row in rows if not row.done]
        for row, frame in zip(active, generator.advance(active), strict=True):
            produced[rows.index(row)] += frame is not None
    assert produced == [3, 6]


def test_sentences_started_together_each_get_their_stream_or_their_own_error(tiny_models, tmp_path):
    """Engine.start_many: a sentence whose prompt cannot be built fails alone; the others start together
    and speak what each speaks alone."""
    from wyoming_qwen3tts.requests import EngineError
    from wyoming_qwen3tts.voices.voice import Voice

    engine = load(tiny_models["custom_voice"], None, tmp_path, max_frames=4)
    voice = engine.voices()[0]
    bad = Voice("nobody", "unknown-kind")
    started = engine.start_many(
        [(TEXTS[0], voice, "english"), ("Hi.", bad, "english"), (TEXTS[1], voice, "english")]
    )
    assert isinstance(started[1], EngineError) and "unknown kind" in str(started[1])
    streams = [started[0], started[2]]
    pcm = [b"", b""]
    while not all(stream.done for stream in streams):
        live = [i for i, stream in enumerate(streams) if not stream.done]
        for index, chunk in zip(live, engine.advance([streams[i] for i in live]), strict=True):
            pcm[index] += chunk
    for text, audio in zip((TEXTS[0], TEXTS[1]), pcm, strict=True):
        alone = b"".join(engine.synthesize(text, voice, "english"))
        assert len(audio) > 0 and same_audio(np.frombuffer(audio, "<i2"), np.frombuffer(alone, "<i2"))


def test_prompts_started_together_share_talker_steps_up_to_a_token_budget(tiny_models, tmp_path, monkeypatch):
    from wyoming_qwen3tts.engine import loop

    engine = load(tiny_models["custom_voice"], None, tmp_path)
    voice = engine.voices()[0]
    generator = engine.frame_generator
    prompts = [engine.prompt(text, voice, "english") for text in TEXTS]
    lengths = [prompt.embeds.shape[1] for prompt in prompts]
    steps: list[list[int]] = []
    talker_prompts = generator.steps.talker_prompts
    monkeypatch.setattr(
        generator.steps,
        "talker_prompts",
        lambda embeds, caches, shared=None: (
            steps.append([e.shape[1] for e in embeds]) or talker_prompts(embeds, caches, shared)
        ),
    )
    monkeypatch.setattr(loop, "JOINED_PROMPT_TOKENS", lengths[0] + lengths[1])
    rows = generator.start_rows(prompts, [4, 4, 4])
    assert steps == [lengths[:2], lengths[2:]]  # the first two fill the budget; the third has its own step
    expected = [torch.stack(list(generator.frames(prompt, 4))) for prompt in prompts]
    got: list[list[torch.Tensor]] = [[], [], []]
    while not all(row.done for row in rows):
        live = [row for row in rows if not row.done]
        for row, frame in zip(live, generator.advance(live), strict=True):
            if frame is not None:
                got[rows.index(row)].append(frame)
    assert all(torch.equal(torch.stack(g), e) for g, e in zip(got, expected, strict=True))

"""Our generation loop reproduces qwen-tts's own generate_* codes exactly (greedy, float32, tiny models)."""

from __future__ import annotations

import pytest
import torch
from qwen_reference import capture_prompt

from wyoming_qwen3tts.engine.loop import FrameGenerator, SamplingOptions
from wyoming_qwen3tts.engine.prompt import TorchEmbeddingTables
from wyoming_qwen3tts.engine.pytorch.steps import TorchSteps
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts

GREEDY = {"do_sample": False, "subtalker_dosample": False}
TEXT = "Hello there, this is a test."


def load(model_dir):
    qwen_tts = import_qwen_tts()
    return qwen_tts.Qwen3TTSModel.from_pretrained(str(model_dir), dtype=torch.float32)


def generator_for(model) -> FrameGenerator:
    """Our loop on the PyTorch steps; it takes over the layers' weights: stock generate() ends here."""
    return FrameGenerator(TorchSteps(model), TorchEmbeddingTables(model))


def stock_codes(tts, call) -> torch.Tensor:
    """The codes qwen-tts decodes at the end of its own generate_* call (reference prefix removed)."""
    seen = {}
    decode = tts.model.speech_tokenizer.decode

    def grab(items):
        seen["codes"] = items[0]["audio_codes"]
        return decode(items)

    tts.model.speech_tokenizer.decode = grab
    try:
        call()
    finally:
        del tts.model.speech_tokenizer.decode
    return seen["codes"]


def calls(kind: str, tts, voices_dir, max_new_tokens: int):
    kwargs = {**GREEDY, "max_new_tokens": max_new_tokens}
    if kind == "custom_voice":
        yield (
            "preset",
            lambda: tts.generate_custom_voice(text=TEXT, speaker="ryan", language="english", **kwargs),
            0,
        )
        yield (
            "dialect",
            lambda: tts.generate_custom_voice(text=TEXT, speaker="eric", language="auto", **kwargs),
            0,
        )
    elif kind == "voice_design":
        yield (
            "design",
            lambda: tts.generate_voice_design(text=TEXT, instruct="A calm voice.", language="auto", **kwargs),
            0,
        )
    else:
        wav = str(voices_dir / "anna.wav")
        icl = tts.create_voice_clone_prompt(ref_audio=wav, ref_text="Hello, this is my voice.")
        xvec = tts.create_voice_clone_prompt(ref_audio=wav, x_vector_only_mode=True)
        ref_len = icl[0].ref_code.shape[0]
        yield (
            "icl",
            lambda: tts.generate_voice_clone(text=TEXT, language="english", voice_clone_prompt=icl, **kwargs),
            ref_len,
        )
        yield (
            "xvec",
            lambda: tts.generate_voice_clone(
                text=TEXT, language="english", voice_clone_prompt=xvec, **kwargs
            ),
            0,
        )


@pytest.mark.parametrize("kind", ["custom_voice", "base", "voice_design"])
def test_greedy_codes_equal_qwen_tts_generate(kind, tiny_models, voices_dir):
    tts = load(tiny_models[kind])
    max_new_tokens = 14
    cases = list(calls(kind, tts, voices_dir, max_new_tokens))
    expected_codes = [stock_codes(tts, call)[ref_len:] for _, call, ref_len in cases]
    generator = generator_for(tts.model)
    for (label, call, _), expected in zip(cases, expected_codes, strict=True):
        prompt = capture_prompt(tts.model, call)
        assert prompt.sampling.do_sample is False and prompt.sampling.subtalker_do_sample is False
        # generate() with max_new_tokens=N draws N codebook-0 tokens and completes N-1 frames.
        ours = torch.stack(list(generator.frames(prompt, max_frames=max_new_tokens - 1)))
        assert ours.shape == (max_new_tokens - 1, 16), label
        assert torch.equal(ours, expected), label


def test_sampling_follows_the_generation_config_and_the_seed(tiny_models):
    tts = load(tiny_models["custom_voice"])
    generator = generator_for(tts.model)
    prompt = capture_prompt(
        tts.model, lambda: tts.generate_custom_voice(text=TEXT, speaker="ryan", language="english")
    )
    config = tts.model.generate_config
    assert prompt.sampling == SamplingOptions.from_generate_kwargs(
        {**config, "subtalker_dosample": config["subtalker_dosample"]}
    )
    first = torch.stack(list(generator.frames(prompt, 8, seed=1)))
    again = torch.stack(list(generator.frames(prompt, 8, seed=1)))
    other = torch.stack(list(generator.frames(prompt, 8, seed=2)))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_two_interleaved_generations_do_not_share_state(tiny_models):
    tts = load(tiny_models["custom_voice"])
    generator = generator_for(tts.model)
    kwargs = {**GREEDY}
    a = capture_prompt(tts.model, lambda: tts.generate_custom_voice(text=TEXT, speaker="ryan", **kwargs))
    b = capture_prompt(
        tts.model, lambda: tts.generate_custom_voice(text="Other words.", speaker="vivian", **kwargs)
    )
    alone_a = torch.stack(list(generator.frames(a, 6)))
    alone_b = torch.stack(list(generator.frames(b, 6)))
    frames_a, frames_b = generator.frames(a, 6), generator.frames(b, 6)
    mixed_a, mixed_b = [], []
    for fa, fb in zip(frames_a, frames_b, strict=True):
        mixed_a.append(fa)
        mixed_b.append(fb)
    assert torch.equal(torch.stack(mixed_a), alone_a)
    assert torch.equal(torch.stack(mixed_b), alone_b)

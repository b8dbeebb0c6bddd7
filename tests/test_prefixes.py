"""Voice prefixes: the talker's keys and values of a prompt's voice-only beginning, reused by the next
prompt of that voice (engine/pytorch/prefixes.py).

On the tiny models of every kind: the positions a prompt marks as shared are the same for any text of
its voice and end where the text begins; a prompt started from a kept prefix leaves the same cache and
gives the same logits as the whole prompt computed (float32 within rounding, printed with pytest -s;
int8 too); greedy codes of whole sentences are equal with and without reuse; different voices or
languages never share; the store keeps to its byte budget.
"""

from __future__ import annotations

import pytest
import torch
from test_batching import KINDS, TEXTS, load

from wyoming_qwen3tts.__main__ import warm_up
from wyoming_qwen3tts.engine.pytorch.prefixes import MIN_PREFIX, PrefixStore
from wyoming_qwen3tts.service import SpeechOptions, SpeechService
from wyoming_qwen3tts.worker import InferenceWorker

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def voice_of(engine, name):
    return next(v for v in engine.voices() if name is None or v.name == name)


def start(engine, text, voice, language="english", reuse=True):
    """A prompt through the talker, as the loop starts one: (logits, hidden, cache, prompt length)."""
    steps = engine.frame_generator.steps
    prompt = engine.prompt(text, voice, language)
    cache = steps.new_talker_cache(prompt.embeds.shape[1] + 4)
    with torch.inference_mode():
        ((logits, hidden),) = steps.talker_prompts(
            [prompt.embeds], [cache], [prompt.shared] if reuse else None
        )
    return logits, hidden, cache, prompt.embeds.shape[1]


@pytest.mark.parametrize(("kind", "voice_name"), KINDS)
def test_shared_positions_are_the_voice_s_and_end_where_the_text_begins(
    tiny_models, voices_dir, tmp_path, kind, voice_name
):
    engine = load(tiny_models[kind], voices_dir if kind == "base" else None, tmp_path)
    voice = voice_of(engine, voice_name)
    first, second = (engine.prompt(text, voice, "english") for text in TEXTS[:2])
    shared = first.shared
    assert shared == second.shared >= MIN_PREFIX
    assert torch.equal(first.embeds[:, :shared], second.embeds[:, :shared])
    if shared < first.embeds.shape[1]:
        assert not torch.equal(first.embeds[:, shared], second.embeds[:, shared])  # the texts' first tokens
    else:  # a clone whose reference transcript outruns its codes: all of the text follows one a frame
        assert shared == second.embeds.shape[1]
        assert not torch.equal(first.trailing_text, second.trailing_text)
    if kind == "custom_voice":  # the language is in the prefix (its think tag), so auto is another one
        assert engine.prompt(TEXTS[0], voice, "auto").shared == shared - 1


@pytest.mark.parametrize("quantize", ["none", "int8"])
@pytest.mark.parametrize(("kind", "voice_name"), KINDS)
def test_a_prompt_from_a_kept_prefix_equals_the_whole_prompt(
    tiny_models, voices_dir, tmp_path, kind, voice_name, quantize
):
    engine = load(tiny_models[kind], voices_dir if kind == "base" else None, tmp_path, quantize=quantize)
    voice = voice_of(engine, voice_name)
    store = engine.frame_generator.steps.prefixes
    start(engine, TEXTS[0], voice)  # keeps the voice's prefix
    assert (len(store), store.hits) == (1, 0)
    logits, hidden, cache, length = start(engine, TEXTS[2], voice)
    assert store.hits == 1
    whole_logits, whole_hidden, whole_cache, _ = start(engine, TEXTS[2], voice, reuse=False)
    assert store.hits == 1
    difference = max(
        (logits - whole_logits).abs().max().item(),
        (hidden - whole_hidden).abs().max().item(),
        *[
            (got[:, :, :length] - want[:, :, :length]).abs().max().item()
            for got, want in zip(
                [*cache.keys, *cache.values], [*whole_cache.keys, *whole_cache.values], strict=True
            )
        ],
    )
    print(f"{kind} {quantize}: prompt from a kept prefix vs whole, max abs difference {difference:.2e}")
    assert difference < 1e-4 * max(1.0, whole_logits.abs().max().item())
    assert int(logits.argmax()) == int(whole_logits.argmax())


@pytest.mark.parametrize(("kind", "voice_name"), KINDS)
def test_greedy_codes_are_the_same_with_and_without_reuse(
    tiny_models, voices_dir, tmp_path, kind, voice_name
):
    engine = load(tiny_models[kind], voices_dir if kind == "base" else None, tmp_path)
    voice = voice_of(engine, voice_name)
    steps = engine.frame_generator.steps
    steps.prefixes = PrefixStore(budget=0)  # keeps nothing: every prompt whole
    whole = [torch.stack(list(engine.frames(text, voice, "english"))) for text in TEXTS]
    steps.prefixes = PrefixStore()
    reused = [torch.stack(list(engine.frames(text, voice, "english"))) for text in TEXTS]
    assert steps.prefixes.hits == len(TEXTS) - 1
    for got, want in zip(reused, whole, strict=True):
        assert torch.equal(got, want)


def test_prompts_started_together_reuse_what_they_can(tiny_models, tmp_path):
    """One joint talker step: a prompt whose prefix is kept starts after it, a new voice's prompt whole;
    each equals its prompt alone and whole."""
    engine = load(tiny_models["custom_voice"], None, tmp_path)
    first, other = engine.voices()[:2]
    steps = engine.frame_generator.steps
    start(engine, TEXTS[0], first)
    prompts = [engine.prompt(TEXTS[1], first, "english"), engine.prompt(TEXTS[2], other, "english")]
    caches = [steps.new_talker_cache(p.embeds.shape[1] + 4) for p in prompts]
    with torch.inference_mode():
        together = steps.talker_prompts([p.embeds for p in prompts], caches, [p.shared for p in prompts])
    assert (steps.prefixes.hits, len(steps.prefixes)) == (1, 2)  # the other voice's prefix kept now
    for (logits, _hidden), text, voice in zip(together, TEXTS[1:], [first, other], strict=True):
        whole_logits, *_ = start(engine, text, voice, reuse=False)
        assert (logits - whole_logits).abs().max().item() < 1e-4 * max(1.0, whole_logits.abs().max().item())


def test_voices_and_languages_do_not_share(tiny_models, tmp_path):
    engine = load(tiny_models["custom_voice"], None, tmp_path)
    first, other = engine.voices()[:2]
    store = engine.frame_generator.steps.prefixes
    start(engine, TEXTS[0], first)
    start(engine, TEXTS[0], other)
    start(engine, TEXTS[0], first, language="auto")
    assert (store.hits, len(store)) == (0, 3)
    start(engine, TEXTS[1], other)
    assert store.hits == 1


def test_the_store_keeps_to_its_budget_least_recently_used_first():
    def prefix(seed: int, positions: int = 4):
        torch.manual_seed(seed)
        embeds = torch.randn(1, positions, 8)
        return embeds, [torch.randn(1, 2, positions, 4)], [torch.randn(1, 2, positions, 4)]

    store = PrefixStore(budget=10**9)
    store.keep(*prefix(1))
    nbytes = store._bytes  # one prefix of these sizes
    store = PrefixStore(budget=2 * nbytes)
    first, second, third = prefix(1), prefix(2), prefix(3)
    store.keep(*first)
    store.keep(*second)
    assert store.find(first[0]) is not None  # now the most recently used
    store.keep(*third)  # over budget: the least recently used, second, goes
    assert store.find(second[0]) is None
    found = store.find(first[0])
    assert found is not None and torch.equal(found.keys[0], first[1][0])
    assert store.find(third[0]) is not None
    assert store._bytes <= store.budget
    tiny = PrefixStore(budget=nbytes - 1)
    tiny.keep(*first)  # larger than the whole budget: not kept
    assert len(tiny) == 0
    changed = first[0].clone()
    changed[0, -1, -1] += 1e-6
    assert store.find(changed) is None  # every byte counts


def test_the_server_warm_up_keeps_the_prefix_of_its_default_voice(tiny_models, tmp_path):
    """__main__.warm_up speaks in the voice and language a request that names neither gets (here --voice
    is the model's second voice): the first such request then starts from the kept prefix."""
    engine = load(tiny_models["custom_voice"], None, tmp_path)
    first, chosen = engine.voices()[:2]
    worker = InferenceWorker(max_batch=2)
    try:
        warm_up(engine, SpeechService(engine, SpeechOptions(default_voice=chosen.name), worker), 2)
    finally:
        worker.close()
    store = engine.frame_generator.steps.prefixes
    start(engine, TEXTS[0], chosen, language="auto")
    assert store.hits == 1
    start(engine, TEXTS[0], first, language="auto")  # not the default voice: not kept yet
    assert store.hits == 1

"""PromptBuilder builds, from look-ups and config files, the very prompt qwen-tts hands its talker."""

from __future__ import annotations

import json

import pytest
import torch
from qwen_reference import capture_prompt

from wyoming_qwen3tts.engine.loop import SamplingOptions, TalkerPrompt
from wyoming_qwen3tts.engine.prompt import (
    PromptBuilder,
    StoredEmbeddingTables,
    TorchEmbeddingTables,
    load_text_tokenizer,
    merge_generate_kwargs,
)
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts
from wyoming_qwen3tts.engine.seams import CloneReference

pytestmark = pytest.mark.usefixtures("single_torch_thread")

GREEDY = {"do_sample": False, "subtalker_dosample": False}
TEXT = "Hello there, this is a test."
SHORT_TEXT = "Yes."


class Model:
    """A loaded tiny model, and a PromptBuilder on its tables and files."""

    def __init__(self, model_dir) -> None:
        self.dir = model_dir
        self.tts = import_qwen_tts().Qwen3TTSModel.from_pretrained(str(model_dir), dtype=torch.float32)
        self.tables = TorchEmbeddingTables(self.tts.model)
        self.builder = PromptBuilder.from_model_dir(self.tables, model_dir)

    def stock(self, call) -> TalkerPrompt:
        return capture_prompt(self.tts.model, call)


@pytest.fixture(scope="module")
def models(tiny_models):
    loaded: dict[str, Model] = {}

    def get(kind: str) -> Model:
        if kind not in loaded:
            loaded[kind] = Model(tiny_models[kind])
        return loaded[kind]

    return get


def assert_same(ours: TalkerPrompt, stock: TalkerPrompt, label: str) -> None:
    assert ours.embeds.shape == stock.embeds.shape, label
    assert torch.equal(ours.embeds, stock.embeds), label
    assert torch.equal(ours.trailing_text, stock.trailing_text), label
    assert torch.equal(ours.pad_embed, stock.pad_embed), label
    assert ours.sampling == stock.sampling, label


def cases(kind: str, model: Model, voices_dir):
    """(label, qwen-tts call taking generate kwargs, build kwargs): test_loop's calls and a few more."""
    tts = model.tts
    if kind == "custom_voice":
        for speaker, language in (("ryan", "english"), ("eric", "auto"), ("Vivian", "English")):
            yield (
                f"preset {speaker} {language}",
                lambda o, s=speaker, lang=language: tts.generate_custom_voice(
                    text=TEXT, speaker=s, language=lang, **o
                ),
                {"speaker": speaker, "language": language},
            )
        yield (
            "preset with instruct (dropped: 0.6B)",
            lambda o: tts.generate_custom_voice(
                text=TEXT, speaker="ryan", language="english", instruct="Speak slowly.", **o
            ),
            {"speaker": "ryan", "language": "english", "instruct": "Speak slowly."},
        )
    elif kind == "voice_design":
        for instruct in ("A calm voice.", ""):
            yield (
                f"design {instruct!r}",
                lambda o, i=instruct: tts.generate_voice_design(text=TEXT, instruct=i, language="auto", **o),
                {"instruct": instruct, "language": "auto"},
            )
    else:
        wav = str(voices_dir / "anna.wav")
        ref_text = (voices_dir / "anna.txt").read_text(encoding="utf-8").strip()
        clones = (
            # label, prompt item, text: the first text outruns the 20 reference frames, the second does not.
            ("icl", tts.create_voice_clone_prompt(ref_audio=wav, ref_text=ref_text), TEXT),
            ("icl short", tts.create_voice_clone_prompt(ref_audio=wav, ref_text="Hi."), SHORT_TEXT),
            ("xvec", tts.create_voice_clone_prompt(ref_audio=wav, x_vector_only_mode=True), TEXT),
        )
        for label, item, text in clones:
            yield (
                label,
                lambda o, item=item, t=text: tts.generate_voice_clone(
                    text=t, language="english", voice_clone_prompt=item, **o
                ),
                {"text": text, "language": "english", "clone": CloneReference.from_prompt_item(item[0])},
            )


@pytest.mark.parametrize("kind", ["custom_voice", "base", "voice_design"])
@pytest.mark.parametrize("overrides", [None, GREEDY], ids=["sampled", "greedy"])
def test_prompt_equals_qwen_tts(kind, overrides, models, voices_dir):
    model = models(kind)
    for label, call, build_kwargs in cases(kind, model, voices_dir):
        stock = model.stock(lambda call=call: call(overrides or {}))
        build_kwargs = {"text": TEXT, **build_kwargs}
        ours = model.builder.build(kind=kind, sampling_overrides=overrides, **build_kwargs)
        assert_same(ours, stock, label)


def test_in_context_cases_cover_both_streaming_branches(models, voices_dir):
    """qwen-tts's streaming in-context prompt pads a text shorter than the reference codes, else trails it."""
    model = models("base")
    trailing = {
        label: model.builder.build(kind="base", **kwargs).trailing_text.shape[1]
        for label, _, kwargs in cases("base", model, voices_dir)
    }
    assert trailing["icl"] > 1  # the text outruns the codes: the rest follows one token per frame
    assert trailing["icl short"] == 1  # text padded to the codes: only tts_pad follows


def test_custom_voice_instruct_on_a_model_that_follows_instructions(models):
    """qwen-tts drops instruct for `tts_model_size in "0b6"`; a 1.7B CustomVoice puts it first."""
    model = models("custom_voice")
    config = json.loads((model.dir / "config.json").read_text(encoding="utf-8"))
    generation = json.loads((model.dir / "generation_config.json").read_text(encoding="utf-8"))
    builder = PromptBuilder(
        model.tables, {**config, "tts_model_size": "1b7"}, generation, load_text_tokenizer(model.dir)
    )
    model.tts.model.tts_model_size = "1b7"
    try:
        for instruct in ("Speak slowly.", "", None):
            stock = model.stock(
                lambda i=instruct: model.tts.generate_custom_voice(
                    text=TEXT, speaker="eric", language="chinese", instruct=i, **GREEDY
                )
            )
            ours = builder.build(
                TEXT,
                "chinese",
                speaker="eric",
                instruct=instruct,
                kind="custom_voice",
                sampling_overrides=GREEDY,
            )
            assert_same(ours, stock, repr(instruct))
    finally:
        model.tts.model.tts_model_size = config["tts_model_size"]
    dropped = model.builder.build(
        TEXT, "chinese", speaker="eric", instruct="Speak slowly.", kind="custom_voice"
    )
    assert (
        builder.build(TEXT, "chinese", speaker="eric", kind="custom_voice").embeds.shape
        == dropped.embeds.shape
    )


@pytest.mark.parametrize(
    ("speaker", "language"),
    [
        ("eric", "Chinese"),  # a dialect speaker speaks his dialect for Chinese and auto
        ("eric", "english"),  # ... and plain English otherwise
        ("dylan", "AUTO"),
        ("ryan", "chinese"),
        ("sohee", "korean"),
        ("ono_anna", "Japanese"),
    ],
)
def test_languages_of_every_kind(speaker, language, models):
    model = models("custom_voice")
    stock = model.stock(
        lambda: model.tts.generate_custom_voice(text=TEXT, speaker=speaker, language=language)
    )
    ours = model.builder.build(TEXT, language, speaker=speaker, kind="custom_voice")
    assert_same(ours, stock, f"{speaker} {language}")


def test_dialect_language_ids_are_the_ones_the_speakers_name(models):
    model = models("custom_voice")
    sichuan = model.builder.build(TEXT, "chinese", speaker="eric", kind="custom_voice")
    plain = model.builder.build(TEXT, "english", speaker="eric", kind="custom_voice")
    ids = json.loads((model.dir / "config.json").read_text())["talker_config"]["codec_language_id"]
    codec = model.tables.codec(torch.tensor([ids["sichuan_dialect"], ids["english"]]))
    # Row 3 + 2 is the language tag: role tokens, then think, think_bos, language (over tts_pad).
    pad = sichuan.pad_embed[0, 0]
    assert torch.equal(sichuan.embeds[0, 5], pad + codec[0, 0])
    assert torch.equal(plain.embeds[0, 5], pad + codec[0, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speaker": "nobody", "language": "english"}, "unsupported speaker 'nobody'"),
        ({"speaker": "ryan", "language": "klingon"}, "unsupported language 'klingon'"),
        # qwen-tts accepts a dialect only through its speaker, not as a language.
        ({"speaker": "eric", "language": "sichuan_dialect"}, "unsupported language 'sichuan_dialect'"),
    ],
)
def test_unknown_speakers_and_languages_are_refused_as_qwen_tts_refuses_them(kwargs, message, models):
    model = models("custom_voice")
    with pytest.raises(ValueError, match=message):
        model.builder.build(TEXT, kind="custom_voice", **kwargs)
    with pytest.raises(ValueError, match="Unsupported"):
        model.tts.generate_custom_voice(text=TEXT, **kwargs)


def test_calls_the_model_does_not_take_are_refused(models, voices_dir):
    builder = models("custom_voice").builder
    with pytest.raises(ValueError, match="does not support generate_voice_design"):
        builder.build(TEXT, "auto", instruct="Calm.", kind="voice_design")
    with pytest.raises(ValueError, match="unknown kind"):
        builder.build(TEXT, "auto", kind="whisper")
    base = models("base").builder
    embedding = torch.zeros(64)
    with pytest.raises(ValueError, match="clone reference"):
        base.build(TEXT, "english", kind="base")
    with pytest.raises(ValueError, match="no preset speakers"):
        base.build(TEXT, "english", speaker="ryan", clone=CloneReference(None, embedding), kind="base")
    with pytest.raises(ValueError, match="needs the reference transcript"):
        base.build(
            TEXT,
            "english",
            clone=CloneReference(torch.zeros(3, 16, dtype=torch.long), embedding),
            kind="base",
        )


def test_tokenizer_ids_equal_the_processors(models):
    model = models("custom_voice")
    for text in (
        TEXT,
        "<|im_start|>assistant\nDon't panic: CamelCaseWords, 1234 and x2.<|im_end|>\n<|im_start|>assistant\n",
        "Zwei\n\nZeilen   mit  Leerzeichen, äöü ß — and “quotes”.",
        "你好，世界。こんにちは 🙂",
    ):
        expected = model.tts.processor(text=text, return_tensors="pt", padding=True)["input_ids"][0]
        assert torch.equal(model.builder.tokenize(text), expected), text


def test_stored_projected_tables_come_within_rounding(models, voices_dir):
    """Text rows projected all at once and stored differ from qwen-tts's batches in the last bits only."""
    for kind in ("custom_voice", "base"):
        model = models(kind)
        stored = PromptBuilder(
            StoredEmbeddingTables.from_torch(model.tts.model),
            model.builder.model_config,
            model.builder.generation_config,
            model.builder.tokenizer,
        )
        for label, _, build_kwargs in cases(kind, model, voices_dir):
            build_kwargs = {"text": TEXT, **build_kwargs}
            ours = stored.build(kind=kind, **build_kwargs)
            exact = model.builder.build(kind=kind, **build_kwargs)
            for name in ("embeds", "trailing_text", "pad_embed"):
                torch.testing.assert_close(
                    getattr(ours, name), getattr(exact, name), rtol=0, atol=1e-6, msg=label
                )


def test_sampling_merges_overrides_over_the_generation_config():
    config = {"do_sample": True, "top_k": 30, "temperature": 0.7}
    merged = merge_generate_kwargs(config, {"do_sample": False, "top_k": None, "max_new_tokens": 9})
    assert merged["do_sample"] is False  # given
    assert merged["top_k"] == 30  # None: the config's
    assert merged["temperature"] == 0.7
    assert merged["subtalker_top_p"] == 1.0  # neither: qwen-tts's hard default
    assert merged["max_new_tokens"] == 9
    assert SamplingOptions.from_generate_kwargs(merged).top_k == 30

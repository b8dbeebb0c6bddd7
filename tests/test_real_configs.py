"""Real-size specs come from the project itself: no folder outside it is needed to build or benchmark.

Where the public config files are at hand ($QWEN3TTS_REFERENCE_CONFIGS, or the shared reference folder
of this project's machines), the in-project values are checked against them.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest
from fixtures import model_builder, real_configs

from benchmarks.benchmark import TEXT
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts

SHARED_REFERENCE = Path("/work/shared/reference/qwen3-tts-configs")
REFERENCE = Path(os.environ.get(model_builder.REFERENCE_DIR_ENV) or SHARED_REFERENCE)
SPECS = [
    ("real-0.6b", "custom_voice"),
    ("real-0.6b", "base"),
    *(("real-1.7b", k) for k in model_builder.KINDS),
]
# model.safetensors of Qwen3-TTS-12Hz-0.6B-Base as published: 1.83 GB in bfloat16.
PUBLISHED_0_6B_BASE_BYTES = 1.83e9

needs_reference = pytest.mark.skipif(
    not (REFERENCE / model_builder.REFERENCE_FOLDERS["real-0.6b"]).is_dir(),
    reason="no folder of the public config files here",
)


@pytest.fixture(autouse=True)
def no_reference_folder(monkeypatch):
    """As in a user's clone: nothing names a folder of config files."""
    monkeypatch.delenv(model_builder.REFERENCE_DIR_ENV, raising=False)


def config_classes():
    import_qwen_tts()
    from qwen_tts.core.models import Qwen3TTSConfig
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config

    return Qwen3TTSConfig, Qwen3TTSTokenizerV2Config


def write_tokenizer(path: Path, spec: model_builder.ModelSpec) -> Path:
    """config.json (transformers reads its version for the split regex) and the text tokenizer."""
    model_builder._write_json(path / "config.json", model_builder._clean_config(spec))
    model_builder.write_text_tokenizer(path, spec.tokenizer)
    return path


@pytest.mark.parametrize(("size", "kind"), SPECS)
def test_spec_builds_without_any_reference_folder(size, kind, tmp_path):
    spec = model_builder.reference_spec(kind, size)
    qwen3_tts_config, codec_config = config_classes()
    config = qwen3_tts_config(**model_builder._clean_config(spec))
    talker = config.talker_config
    hidden = {"real-0.6b": 1024, "real-1.7b": 2048}[size]
    assert (talker.hidden_size, talker.num_hidden_layers, talker.text_vocab_size) == (hidden, 28, 151936)
    assert talker.code_predictor_config.hidden_size == 1024
    assert config.tts_model_type == kind
    assert ("speaker_encoder_config" in spec.config) == (kind == "base")
    assert codec_config(**spec.speech_tokenizer_config).decoder_config.num_quantizers == 16
    assert len(spec.tokenizer.vocab) == real_configs.TEXT_REGULAR_TOKENS
    # The tokenizer splits qwen-tts' chat template where qwen-tts slices it, and fits the embedding.
    model_builder.check_text_tokenizer(write_tokenizer(tmp_path, spec), spec.config)


def test_no_folder_is_read_unless_named():
    assert model_builder.reference_dir() is None


def test_unknown_sizes_and_kinds_are_refused():
    with pytest.raises(ValueError, match="1.7B"):
        model_builder.reference_spec("voice_design", "real-0.6b")
    with pytest.raises(ValueError, match="real size"):
        model_builder.reference_spec("base", "real-3b")


def test_a_reference_folder_without_the_configs_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(model_builder.REFERENCE_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="missing"):
        model_builder.reference_spec("base", "real-0.6b")


def test_parameter_count_is_the_published_checkpoint_size():
    """Compute per frame follows from the weights: 0.6B-Base in bfloat16 is the published 1.83 GB."""
    import torch

    qwen3_tts_config, _ = config_classes()
    import_qwen_tts()
    from qwen_tts.core.models import Qwen3TTSForConditionalGeneration

    spec = model_builder.reference_spec("base", "real-0.6b")
    with torch.device("meta"):  # shapes only: no memory, no time
        model = Qwen3TTSForConditionalGeneration(qwen3_tts_config(**model_builder._clean_config(spec)))
    parameters = sum(t.numel() for t in model.state_dict().values())
    assert abs(2 * parameters - PUBLISHED_0_6B_BASE_BYTES) < 0.005e9


def test_tokenizer_spells_ordinary_english_about_word_by_word(tmp_path):
    """Prompt length sets the prefill time before first audio: it must be near the real tokenizer's."""
    from transformers import AutoTokenizer

    spec = model_builder.reference_spec("custom_voice")
    tokenizer = AutoTokenizer.from_pretrained(str(write_tokenizer(tmp_path, spec)), fix_mistral_regex=True)
    # Above 100000 tokens transformers swaps the split regex, as it does for the real tokenizer.
    assert tokenizer.fix_mistral_regex is True
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(TEXT).input_ids)
    words_and_marks = len(TEXT.split()) + TEXT.count(",") + TEXT.count(".")
    assert tokens[:5] == ["The", "Ġweather", "Ġin", "Ġthe", "Ġkitchen"]
    assert words_and_marks <= len(tokens) <= 1.2 * words_and_marks  # byte by byte it was 4.6 times
    assert tokenizer.convert_tokens_to_ids("assistant") == real_configs.ASSISTANT_TOKEN_ID
    assert tokenizer.convert_tokens_to_ids("<tts_text_eod>") == spec.config["tts_eos_token_id"]


@needs_reference
@pytest.mark.parametrize(("size", "kind"), SPECS)
def test_in_project_configs_equal_the_public_files(size, kind):
    ours = model_builder.reference_spec(kind, size)
    theirs = model_builder.reference_spec(kind, size, directory=REFERENCE)
    qwen3_tts_config, codec_config = config_classes()

    def as_loaded(spec):  # every field, defaults filled in, as from_pretrained sees config.json
        return qwen3_tts_config(**model_builder._clean_config(spec)).to_dict()

    assert as_loaded(ours) == as_loaded(theirs)
    assert (
        codec_config(**ours.speech_tokenizer_config).to_dict()
        == codec_config(**theirs.speech_tokenizer_config).to_dict()
    )
    assert ours.generation_config == theirs.generation_config
    assert ours.tokenizer.tokenizer_config == theirs.tokenizer.tokenizer_config


@needs_reference
def test_vocabulary_matches_the_real_one_where_it_matters(tmp_path):
    from transformers import AutoTokenizer

    ours = model_builder.reference_spec("custom_voice", "real-0.6b")
    theirs = model_builder.reference_spec("custom_voice", "real-0.6b", directory=REFERENCE)
    assert len(ours.tokenizer.vocab) == len(theirs.tokenizer.vocab)
    symbols = model_builder.byte_symbols()
    assert all(ours.tokenizer.vocab[s] == theirs.tokenizer.vocab[s] == i for i, s in enumerate(symbols))
    assert ours.tokenizer.vocab["assistant"] == theirs.tokenizer.vocab["assistant"]

    def count(spec, name):
        path = write_tokenizer(tmp_path / name, spec)
        return len(AutoTokenizer.from_pretrained(str(path), fix_mistral_regex=True)(TEXT).input_ids)

    # The real vocabulary's merges (built for the same words) cut a few words in two; ours none.
    assert len(TEXT.split()) <= count(ours, "ours") <= count(theirs, "theirs")

"""The tiny random-weight models load and synthesize through the real qwen-tts code, offline."""

from __future__ import annotations

import contextlib
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub reads it, if this module imports it first

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures import model_builder, tiny_model

from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts

MAX_NEW_TOKENS = 12
# qwen-tts returns one frame less than max_new_tokens: the last sampled token never gets its
# residual codes (the code predictor runs in the next forward step, which does not happen).
FRAMES = MAX_NEW_TOKENS - 1
GREEDY = {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": MAX_NEW_TOKENS}
TEXT = "Hello world, this is a test."
CUSTOM_VOICE_SPEAKERS = sorted(model_builder.CUSTOM_VOICE_SPEAKERS)  # the real nine, two of them dialect


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Forbid the hub even if huggingface_hub was imported before this module set HF_HUB_OFFLINE."""
    import huggingface_hub.constants

    saved = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    yield
    huggingface_hub.constants.HF_HUB_OFFLINE = saved


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(kind, seed) -> model dir, each built once per module (voice_design through the CLI)."""
    built: dict[tuple[str, int], Path] = {}

    def _build(kind: str, seed: int = 0) -> Path:
        if (kind, seed) not in built:
            out = tmp_path_factory.mktemp(f"{kind}-{seed}")
            if kind == "voice_design":
                tiny_model.main([str(out), "--kind", kind, "--seed", str(seed)])
            else:
                tiny_model.build_tiny_model(out, kind, seed=seed)
            built[kind, seed] = out
        return built[kind, seed]

    return _build


@pytest.fixture(scope="module")
def load(build):
    """load(kind, seed) -> Qwen3TTSModel, loaded once per module."""
    import_qwen_tts()
    from qwen_tts import Qwen3TTSModel

    loaded = {}

    def _load(kind: str, seed: int = 0):
        if (kind, seed) not in loaded:
            loaded[kind, seed] = Qwen3TTSModel.from_pretrained(str(build(kind, seed)))
        return loaded[kind, seed]

    return _load


@pytest.fixture(scope="module")
def ref_wav(tmp_path_factory) -> Path:
    """1.5 s of a 220 Hz tone with a little noise, as a 24 kHz wav file."""
    rate = 24000
    t = np.arange(int(1.5 * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(t.size)
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * noise).astype(np.float32)
    path = tmp_path_factory.mktemp("ref") / "ref.wav"
    sf.write(path, audio, rate)
    return path


@contextlib.contextmanager
def spy_codes(tts):
    """Record the codec frames (T, 16) each model.generate call returns, for the block's length."""
    calls: list = []
    generate = tts.model.generate

    def recording(*args, **kwargs):
        codes, hidden = generate(*args, **kwargs)
        calls.extend(codes)
        return codes, hidden

    tts.model.generate = recording
    try:
        yield calls
    finally:
        del tts.model.generate  # uncover the class method again


def check_audio(wavs, sample_rate, frames=FRAMES) -> np.ndarray:
    assert sample_rate == 24000
    assert len(wavs) == 1
    wav = wavs[0]
    assert wav.dtype == np.float32
    assert wav.shape == (frames * 1920,)
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    assert 0.01 < rms < 0.5, rms
    assert np.abs(wav).max() <= 1.0
    return wav


@pytest.mark.parametrize("kind", model_builder.KINDS)
def test_directory_layout(build, kind):
    out = build(kind)
    for name in (
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "model.safetensors",
        "speech_tokenizer/config.json",
        "speech_tokenizer/preprocessor_config.json",
        "speech_tokenizer/model.safetensors",
    ):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    talker = config["talker_config"]
    assert config["tts_model_type"] == kind
    assert config["tts_model_size"] == ("1b7" if kind == "voice_design" else "0b6")
    assert talker["vocab_size"] == 3072 and talker["num_code_groups"] == 16
    assert [talker[f"codec_{name}"] for name in ("eos_token_id", "pad_id", "bos_id")] == [2150, 2148, 2149]
    assert talker["codec_language_id"]["english"] == 2050
    assert sum(talker["rope_scaling"]["mrope_section"]) * 2 == talker["head_dim"]
    if kind == "base":
        assert set(config["speaker_encoder_config"]) <= set(model_builder.SPEAKER_ENCODER_KEYS)
    codec = json.loads((out / "speech_tokenizer/config.json").read_text())
    decoder = codec["decoder_config"]
    assert np.prod(decoder["upsample_rates"] + decoder["upsampling_ratios"]) == 1920
    assert decoder["codebook_size"] == 2048 and decoder["num_quantizers"] == 16
    assert json.loads((out / "generation_config.json").read_text())["max_new_tokens"] == 40


def test_chat_template_token_layout(load):
    tts = load("custom_voice")
    config = tts.model.config
    ids = tts.processor(text="<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    ids = ids[0]
    newline = tts.processor.tokenizer.convert_tokens_to_ids("Ċ")
    role = [config.im_start_token_id, config.assistant_token_id, newline]
    assert ids[:3] == role
    assert ids[-5:] == [config.im_end_token_id, newline, *role]
    assert tts.processor.tokenizer.decode(ids[3:-5]) == "Hello"
    assert max(config.tts_bos_token_id, config.tts_eos_token_id, config.tts_pad_token_id) < (
        config.talker_config.text_vocab_size
    )


def test_custom_voice(load):
    tts = load("custom_voice")
    assert tts.get_supported_speakers() == CUSTOM_VOICE_SPEAKERS
    languages = tts.get_supported_languages()
    assert "english" in languages and "beijing_dialect" not in languages
    with spy_codes(tts) as calls:
        wav = check_audio(*tts.generate_custom_voice(TEXT, speaker="ryan", language="english", **GREEDY))
    (codes,) = calls
    assert tuple(codes.shape) == (FRAMES, 16)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048  # no EOS, no special ids
    # The same request again gives the same audio; another speaker and a dialect speaker work.
    again = check_audio(*tts.generate_custom_voice(TEXT, speaker="ryan", language="english", **GREEDY))
    np.testing.assert_array_equal(wav, again)
    other = check_audio(*tts.generate_custom_voice(TEXT, speaker="dylan", language="auto", **GREEDY))
    assert not np.array_equal(wav, other)
    # A 0b6 model ignores instruct, as the real 0.6B CustomVoice does.
    shout = tts.generate_custom_voice(TEXT, speaker="ryan", language="english", instruct="Shout.", **GREEDY)
    np.testing.assert_array_equal(wav, shout[0][0])


def test_sampling_runs_to_max_new_tokens(load):
    import torch

    tts = load("custom_voice")
    torch.manual_seed(0)
    wavs, rate = tts.generate_custom_voice("Hi.", speaker="vivian", max_new_tokens=MAX_NEW_TOKENS)
    check_audio(wavs, rate)


def test_same_seed_same_model_other_seed_other_audio(build, load):
    first = build("custom_voice")
    copy = tiny_model.build_tiny_model(first.parent / "copy", "custom_voice", seed=0)
    for name in ("model.safetensors", "speech_tokenizer/model.safetensors"):
        assert (copy / name).read_bytes() == (first / name).read_bytes()

    import_qwen_tts()
    from qwen_tts import Qwen3TTSModel

    def synthesize(tts):
        return tts.generate_custom_voice(TEXT, speaker="aiden", **GREEDY)[0][0]

    wav = synthesize(load("custom_voice"))
    np.testing.assert_array_equal(wav, synthesize(Qwen3TTSModel.from_pretrained(str(copy))))
    wav_other = synthesize(load("custom_voice", seed=1))
    assert wav_other.shape == wav.shape and not np.allclose(wav, wav_other)


def test_voice_clone_icl(load, ref_wav):
    tts = load("base")
    assert tts.model.tts_model_size == "0b6"
    (item,) = tts.create_voice_clone_prompt(str(ref_wav), ref_text="A reference sentence.")
    assert item.icl_mode and not item.x_vector_only_mode
    assert tuple(item.ref_code.shape) == (19, 16)  # ceil(1.5 s * 12.5 frames/s)
    assert tuple(item.ref_spk_embedding.shape) == (tts.model.config.talker_config.hidden_size,)
    wavs, rate = tts.generate_voice_clone(TEXT, language="english", voice_clone_prompt=[item], **GREEDY)
    # qwen-tts cuts the reference part at int(ref_len / total_len * samples), which float rounding can
    # put one sample early; 19 reference frames + 11 new ones cut exactly.
    check_audio(wavs, rate)


def test_voice_clone_x_vector_only(load, ref_wav):
    tts = load("base")
    audio, rate = sf.read(ref_wav, dtype="float32")
    (item,) = tts.create_voice_clone_prompt((audio, rate), x_vector_only_mode=True)
    assert item.x_vector_only_mode and not item.icl_mode and item.ref_code is None
    wavs, rate = tts.generate_voice_clone(TEXT, voice_clone_prompt=[item], **GREEDY)
    check_audio(wavs, rate)


def test_voice_design(load):
    tts = load("voice_design")
    assert tts.model.tts_model_size == "1b7"
    # 1.7B-like: the code predictor is narrower than the talker and projects its input.
    assert tts.model.talker.code_predictor.config.hidden_size < tts.model.config.talker_config.hidden_size
    designed = check_audio(*tts.generate_voice_design(TEXT, instruct="A calm, deep voice.", **GREEDY))
    plain = check_audio(*tts.generate_voice_design(TEXT, instruct="", language="english", **GREEDY))
    assert not np.array_equal(designed, plain)

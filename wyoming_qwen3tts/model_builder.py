"""Write a complete random-weight Qwen3-TTS model directory from configuration dicts.

No machine of this project can download the real weights, yet tests, demos and benchmarks need a model
directory that loads through the real path, `qwen_tts.Qwen3TTSModel.from_pretrained(dir)`, and runs the
real qwen-tts code. This module builds one: the real classes, a configuration given as the dicts that
config.json and speech_tokenizer/config.json hold, seeded random weights saved as safetensors, a small
byte-level BPE text tokenizer and the processor and generation configs.

`write_model_dir(out_dir, spec, seed)` does the writing; a `ModelSpec` says what to write.
`reference_spec(kind, size)` makes the spec of a real-size model ("real-0.6b", "real-1.7b") from the
public configs this project carries (`real_configs`), with a vocabulary of the real size and merges
that spell ordinary English a word a token; `wyoming_qwen3tts.tiny_model` makes the tiny one the tests
use.

Random weights need three fixes to behave (see `_calibrate`): the codec codebooks start as zeros and
decode to silence, so they get random values like every other matrix; the talker's EOS row of
codec_head is zeroed, so its logit is exactly 0 while the best of the 2048 code logits is positive and a
generation runs to max_new_tokens; the codec's last convolution is scaled so decoded audio has an RMS of
about 0.1.
"""

from __future__ import annotations

import copy
import json
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import real_configs
from .real_configs import (
    CODEBOOK_SIZE,
    CUSTOM_VOICE_DIALECTS,
    CUSTOM_VOICE_SPEAKERS,
    DIALECT_LANGUAGE_IDS,
    LANGUAGE_IDS,
    SAMPLE_RATE,
)

KINDS = ("custom_voice", "base", "voice_design")

# Real-size models get merges for these words, so they spell ordinary English about a token per word as
# the real tokenizer (whose merges.txt is not public) does: a prompt then has about its real length, and
# with it the prefill time a benchmark measures before first audio (byte by byte, the benchmark sentence
# made a prompt of 121 tokens instead of 37).
ENGLISH_SAMPLE = (
    "The weather in the kitchen is sunny today, with a gentle breeze from the west and a high of twenty "
    "one degrees. Hello, hi, good morning, good evening and good night. It is time to turn on the lights "
    "in the living room, the bedroom and the hall; the door is locked and the oven is off. Your timer "
    "for ten minutes has finished. Tomorrow it will rain in the afternoon, so take an umbrella."
)
# A folder of the public config files to build from instead of real_configs (see reference_spec).
REFERENCE_DIR_ENV = "QWEN3TTS_REFERENCE_CONFIGS"
REFERENCE_FOLDERS = {"real-0.6b": "Qwen3-TTS-12Hz-0.6B-Base", "real-1.7b": "Qwen3-TTS-12Hz-1.7B-Base"}

# The transformers version the real configs were saved with. It matters for real-size vocabularies:
# for a local tokenizer of more than 100000 tokens whose config.json names a version above 4.57.2,
# transformers 4.57.3 (asked by qwen-tts for fix_mistral_regex=True) swaps the split regex for the
# "fixed Mistral" one, as it does for the real checkpoints. (The tiny vocabulary keeps the Qwen2 regex.)
TRANSFORMERS_VERSION = "4.57.3"


# The keys Qwen3TTSSpeakerEncoderConfig.__init__ accepts; it takes no **kwargs, so any other key in
# config.json (model_type, transformers_version, ...) makes the config fail to load.
SPEAKER_ENCODER_KEYS = (
    "mel_dim",
    "enc_dim",
    "enc_channels",
    "enc_kernel_sizes",
    "enc_dilations",
    "enc_attention_channels",
    "enc_res2net_scale",
    "enc_se_channels",
    "sample_rate",
)

# Text of the chat template qwen-tts builds, and the token counts its slicing assumes:
# input_id[:, :3] is "<|im_start|>assistant\n", input_id[:, -5:] is "<|im_end|>\n<|im_start|>assistant\n".
ROLE_PREFIX = "<|im_start|>assistant\n"
TEXT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"

PROCESSOR_CONFIG = {
    "padding_side": "left",
    "padding_value": 0.0,
    "processor_class": "Qwen3TTSProcessor",
    "return_attention_mask": True,
}
SPEECH_TOKENIZER_PREPROCESSOR_CONFIG = {
    "chunk_length_s": None,
    "feature_extractor_type": "EncodecFeatureExtractor",
    "feature_size": 1,
    "overlap": None,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "sampling_rate": SAMPLE_RATE,
}
MODELSCOPE_CONFIGURATION = {"framework": "Pytorch", "task": "text-to-speech"}
SPEECH_TOKENIZER_MODELSCOPE_CONFIGURATION = {
    "framework": "pytorch",
    "task": "feature-extraction",
    "allow_remote": True,
}

# Calibration targets (see _calibrate).
CODEC_HEAD_GAIN = 4.0  # code logits get a standard deviation of about 4
TARGET_RMS = 0.1  # decoded audio level
CALIBRATION_FRAMES = 8


@dataclass
class TextTokenizerSpec:
    """A byte-level BPE tokenizer: vocab.json, merges.txt and the tokenizer_config.json."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    tokenizer_config: dict[str, Any]


@dataclass
class ModelSpec:
    """Everything a model directory holds besides the weights.

    config and speech_tokenizer_config are the dicts written as config.json and
    speech_tokenizer/config.json; dtype is the dtype the weights are saved in.
    """

    config: dict[str, Any]
    speech_tokenizer_config: dict[str, Any]
    tokenizer: TextTokenizerSpec
    generation_config: dict[str, Any]
    dtype: str = "float32"
    extra_files: dict[str, Any] = field(default_factory=dict)


def reference_dir() -> Path | None:
    """$QWEN3TTS_REFERENCE_CONFIGS: a folder of public config files to build from, or None (real_configs)."""
    value = os.environ.get(REFERENCE_DIR_ENV)
    return Path(value) if value else None


def deep_update(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge overrides into base in place, recursing into nested dicts; return base."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def apply_overrides(spec: ModelSpec, overrides: Mapping[str, Any] | None) -> ModelSpec:
    """Deep-merge {"config": {...}, "speech_tokenizer_config": {...}, "generation_config": {...}}."""
    for name, value in (overrides or {}).items():
        if name not in ("config", "speech_tokenizer_config", "generation_config"):
            raise ValueError(f"cannot override {name!r}")
        deep_update(getattr(spec, name), value)
    return spec


def kind_settings(kind: str) -> dict[str, Any]:
    """The top-level and talker values that make a checkpoint of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}, expected one of {', '.join(KINDS)}")
    if kind == "custom_voice":
        return {
            "tts_model_type": kind,
            "talker_config": {
                "spk_id": dict(CUSTOM_VOICE_SPEAKERS),
                "spk_is_dialect": dict(CUSTOM_VOICE_DIALECTS),
                "codec_language_id": {**LANGUAGE_IDS, **DIALECT_LANGUAGE_IDS},
            },
        }
    return {
        "tts_model_type": kind,
        "talker_config": {"spk_id": {}, "spk_is_dialect": {}, "codec_language_id": dict(LANGUAGE_IDS)},
    }


# ---------------------------------------------------------------- text tokenizer


def byte_symbols() -> list[str]:
    """The 256 byte-level symbols in GPT-2/Qwen2 vocabulary order ("!" is 0, "Ċ" 198, "Ġ" 220)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return list(bytes_to_unicode().values())


def to_byte_level(text: str) -> str:
    """Spell text in byte-level symbols, as vocab.json and merges.txt do ("\\n" becomes "Ċ")."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def english_words(text: str) -> list[str]:
    """text's words as the byte-level pre-tokenizer cuts them (" weather" -> "Ġweather"), each once.

    Capitalised words also come bare, as they start a text; after every spaced word, so that their
    merges rank below the spaced words' and cut fewer of those apart ("t h" before "Ġwi t").
    """
    words = re.findall(r"[A-Za-z]+", text)
    spaced = [to_byte_level(" " + word) for word in words]
    bare = [to_byte_level(word) for word in words if word[0].isupper()]
    return list(dict.fromkeys(spaced + bare))


def merges_for_words(words: Iterable[str], vocab: Mapping[str, int]) -> list[tuple[str, str]]:
    """Merges that make each byte-level word a single token, using only tokens vocab has.

    Each word is split into a binary tree whose every node is in vocab (left-heavy splits first, so a
    vocab holding all prefixes gives a left-to-right chain); children merge before their parent.
    """
    memo: dict[str, list[tuple[str, str]] | None] = {}

    def build(piece: str) -> list[tuple[str, str]] | None:
        if piece in memo:
            return memo[piece]
        result: list[tuple[str, str]] | None = None
        if piece in vocab:
            if len(piece) == 1:
                result = []
            else:
                for cut in range(len(piece) - 1, 0, -1):
                    left, right = build(piece[:cut]), build(piece[cut:])
                    if left is not None and right is not None:
                        result = left + right + [(piece[:cut], piece[cut:])]
                        break
        memo[piece] = result
        return result

    merges: list[tuple[str, str]] = []
    for word in words:
        chain = build(word)
        if chain is None:
            raise ValueError(f"vocab cannot spell {word!r} as one token")
        merges.extend(m for m in chain if m not in merges)
    return merges


def added_token_entry(content: str, special: bool = True) -> dict[str, Any]:
    """One added_tokens_decoder entry of tokenizer_config.json."""
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def qwen2_tokenizer_config(added: Mapping[int, str]) -> dict[str, Any]:
    """A Qwen2Tokenizer tokenizer_config.json with the given special tokens (id -> content)."""
    specials = [c for c in added.values() if c not in ("<|endoftext|>", "<tts_text_eod>")]
    config: dict[str, Any] = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): added_token_entry(c) for i, c in sorted(added.items())},
        "additional_special_tokens": specials,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    return config


def check_text_tokenizer(model_dir: Path, config: Mapping[str, Any]) -> None:
    """Fail unless the tokenizer splits qwen-tts' chat template where qwen-tts slices it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, fix_mistral_regex=True)
    ids = tokenizer(ROLE_PREFIX + "Hello" + TEXT_SUFFIX)["input_ids"]
    head = [config["im_start_token_id"], config["assistant_token_id"], tokenizer.convert_tokens_to_ids("Ċ")]
    tail = [config["im_end_token_id"], head[2], *head]
    if ids[:3] != head or ids[-5:] != tail:
        raise ValueError(f"tokenizer splits the chat template wrongly: {ids}")
    for name in ("tts_bos_token_id", "tts_eos_token_id", "tts_pad_token_id"):
        if not 0 <= config[name] < config["talker_config"]["text_vocab_size"]:
            raise ValueError(f"{name} {config[name]} lies outside text_vocab_size")
    if len(tokenizer) > config["talker_config"]["text_vocab_size"]:
        raise ValueError(f"text_vocab_size is smaller than the tokenizer ({len(tokenizer)})")


# ---------------------------------------------------------------- real-size specs


def real_size_vocab(words: Iterable[str]) -> dict[str, int]:
    """A vocab.json of the real size that spells each byte-level word in words as one token.

    What of the real vocabulary (which this project does not carry) matters to a random-weight model:
    its size, 151643 tokens (above 100000, transformers gives the tokenizer the "fixed Mistral" split
    regex, as it does the real one), the 256 byte symbols at ids 0-255, "assistant" at the id config.json
    names, and ordinary words as single tokens, so that prompts have their real length (see
    ENGLISH_SAMPLE). Every prefix of each word becomes a token, so its merges chain left to right; the
    remaining ids hold placeholders no merge can reach.
    """
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols())}
    assistant = to_byte_level("assistant")
    reserved = {real_configs.ASSISTANT_TOKEN_ID: assistant}
    next_id = len(vocab)
    for word in [assistant, *words]:
        for end in range(2, len(word) + 1):
            piece = word[:end]
            if piece in vocab or piece in reserved.values():
                continue
            while next_id in reserved:
                next_id += 1
            vocab[piece] = next_id
            next_id += 1
    vocab.update((piece, i) for i, piece in reserved.items())
    taken = set(vocab.values())
    vocab.update((f"<unused_{i}>", i) for i in range(real_configs.TEXT_REGULAR_TOKENS) if i not in taken)
    if len(vocab) != real_configs.TEXT_REGULAR_TOKENS:
        raise ValueError(
            f"{len(vocab)} tokens do not fit the {real_configs.TEXT_REGULAR_TOKENS} of the vocabulary"
        )
    return vocab


def _sample_words(vocab: Mapping[str, int] | None = None) -> list[str]:
    """The words real-size models spell as one token: the chat roles and ENGLISH_SAMPLE's words."""
    words = [to_byte_level(w) for w in ("assistant", "user", "system")]
    return words + [w for w in english_words(ENGLISH_SAMPLE) if vocab is None or w in vocab]


def reference_spec(kind: str, size: str = "real-0.6b", directory: Path | None = None) -> ModelSpec:
    """The spec of a real-size random model: the real configs, a vocabulary of the real size.

    size "real-0.6b" uses the 0.6B-Base config (custom_voice gets the CustomVoice speaker table);
    "real-1.7b" uses the 1.7B-Base config and is the only real size that has voice_design.
    Weights are bfloat16 to keep the files small (about 1.8 GB for 0.6B).

    The configs come from `real_configs`, the vocabulary from `real_size_vocab`. With directory (or
    $QWEN3TTS_REFERENCE_CONFIGS) they are read instead from a folder of the public files, one
    subfolder per model (Qwen3-TTS-12Hz-0.6B-Base/config.json, vocab.json, ...), the real vocab.json
    included.
    """
    if size not in real_configs.REAL_SIZES:
        raise ValueError(f"unknown real size {size!r}, expected one of {', '.join(real_configs.REAL_SIZES)}")
    if kind == "voice_design" and size != "real-1.7b":
        raise ValueError("VoiceDesign exists only at 1.7B: use size real-1.7b")
    directory = directory or reference_dir()
    if directory is None:
        config = real_configs.model_config(size)
        vocab = real_size_vocab(_sample_words())
        tokenizer_config = real_configs.text_tokenizer_config()
        speech_tokenizer_config = real_configs.speech_tokenizer_config()
        generation_config = real_configs.generation_config()
    else:
        source = directory / REFERENCE_FOLDERS[size]
        if not (source / "config.json").is_file():
            raise ValueError(f"{source} holds no config.json (set by ${REFERENCE_DIR_ENV} or directory)")

        def load(name: str) -> Any:
            with open(source / name, encoding="utf-8") as f:
                return json.load(f)

        config = load("config.json")
        vocab = load("vocab.json")
        tokenizer_config = load("tokenizer_config.json")
        speech_tokenizer_config = load("speech_tokenizer/config.json")
        generation_config = load("generation_config.json")
    deep_update(config, kind_settings(kind))
    if kind != "base":
        config.pop("speaker_encoder_config", None)  # as in the real CustomVoice config
    merges = merges_for_words(_sample_words(vocab), vocab)
    return ModelSpec(
        config=config,
        speech_tokenizer_config=speech_tokenizer_config,
        tokenizer=TextTokenizerSpec(vocab=vocab, merges=merges, tokenizer_config=tokenizer_config),
        generation_config=generation_config,
        dtype="bfloat16",
    )


# ---------------------------------------------------------------- weights


def _tensor_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _randomize(module: Any, seed: int, prefix: str = "") -> None:
    """Give every matrix (and every bias) seeded random values; 1-D constants keep their init.

    Each tensor's values depend only on the seed and prefix + its name, not on the global RNG.
    Matrices get N(0, 1/fan_in) with fan_in the product of all but the first dimension; this also
    covers the codec codebooks (decoder embedding_sum parameters, encoder embed_sum buffers) that
    start as zeros. Norm weights, layer scales, SnakeBeta parameters and cluster usage keep their
    constructor constants.
    """
    import torch

    generator = torch.Generator()
    tensors = dict(module.named_parameters())
    tensors.update((n, b) for n, b in module.named_buffers() if n.endswith("embed_sum"))
    with torch.no_grad():
        for name, tensor in tensors.items():
            if tensor.ndim >= 2:
                std = tensor[0].numel() ** -0.5
            elif name.endswith(".bias"):
                std = 0.02
            else:
                continue
            generator.manual_seed(_tensor_seed(seed, prefix + name))
            tensor.normal_(0.0, std, generator=generator)  # in place: no copy of a 151936 x 2048 table


def _calibrate(model: Any, codec: Any, config: Mapping[str, Any], seed: int) -> None:
    """Make random weights generate like a model: no EOS, audible non-clipping audio."""
    import torch

    talker = config["talker_config"]
    with torch.no_grad():
        head = model.talker.codec_head.weight
        head.mul_(CODEC_HEAD_GAIN)
        # The EOS logit is exactly 0 while the 2048 code logits are about N(0, 16) each: their maximum
        # is positive except with probability 2**-2048, so greedy decoding never stops early. Sampling
        # keeps EOS out of any top_k below ~1000 (the default is 50); without top_k it picks EOS with
        # probability ~1e-7 per step. (qwen-tts suppresses the other ids from 2048 up.)
        head[talker["codec_eos_token_id"]].zero_()

        generator = torch.Generator().manual_seed(_tensor_seed(seed, "calibration"))
        num_groups = codec.config.decoder_config.num_quantizers
        codes = torch.randint(0, CODEBOOK_SIZE, (1, num_groups, CALIBRATION_FRAMES), generator=generator)
        # The decoder clamps its output to [-1, 1]; measure the last convolution's output before that.
        last = codec.decoder.decoder[-1].conv
        captured = []
        hook = last.register_forward_hook(lambda _module, _args, output: captured.append(output))
        try:
            codec.decoder(codes)
        finally:
            hook.remove()
        rms = float(captured[0].float().pow(2).mean().sqrt())
        if rms > 0:
            scale = TARGET_RMS / rms
            last.weight.mul_(scale)
            if last.bias is not None:
                last.bias.mul_(scale)


def _save_weights(module: Any, path: Path, dtype: Any) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.detach().to(dtype).contiguous() for name, t in module.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors writes 0600; the other files get the usual mode


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _clean_config(spec: ModelSpec) -> dict[str, Any]:
    config = copy.deepcopy(spec.config)
    config.setdefault("transformers_version", TRANSFORMERS_VERSION)
    encoder = config.get("speaker_encoder_config")
    if encoder is not None:
        config["speaker_encoder_config"] = {k: v for k, v in encoder.items() if k in SPEAKER_ENCODER_KEYS}
    return config


def write_text_tokenizer(out: Path, tokenizer: TextTokenizerSpec) -> None:
    """tokenizer_config.json, vocab.json and merges.txt (also to refresh the tokenizer of a built model)."""
    _write_json(out / "tokenizer_config.json", tokenizer.tokenizer_config)
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(tokenizer.vocab, f, ensure_ascii=False, separators=(",", ":"))
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in tokenizer.merges)


def write_model_dir(out_dir: Path | str, spec: ModelSpec, seed: int = 0, check: bool = True) -> Path:
    """Write spec with seeded random weights as a loadable model directory; return its path.

    The directory holds config.json, generation_config.json, preprocessor_config.json,
    tokenizer_config.json, vocab.json, merges.txt, model.safetensors and speech_tokenizer/ with
    config.json, preprocessor_config.json and model.safetensors. check verifies the tokenizer splits
    the chat template where qwen-tts slices it.
    """
    import torch

    from .qwen_import import import_qwen_tts

    import_qwen_tts()
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _clean_config(spec)
    dtype = getattr(torch, spec.dtype)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**copy.deepcopy(config))).eval()
            codec = Qwen3TTSTokenizerV2Model(
                Qwen3TTSTokenizerV2Config(**copy.deepcopy(spec.speech_tokenizer_config))
            ).eval()
        finally:
            torch.set_default_dtype(default_dtype)
        _randomize(model, seed)
        _randomize(codec, seed, prefix="speech_tokenizer.")
        _calibrate(model, codec, config, seed)

    _save_weights(model, out / "model.safetensors", dtype)
    del model
    speech_dir = out / "speech_tokenizer"
    speech_dir.mkdir(exist_ok=True)
    _save_weights(codec, speech_dir / "model.safetensors", dtype)
    del codec

    speech_config = copy.deepcopy(spec.speech_tokenizer_config)
    speech_config.setdefault("transformers_version", TRANSFORMERS_VERSION)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", spec.generation_config)
    _write_json(out / "preprocessor_config.json", PROCESSOR_CONFIG)
    _write_json(out / "configuration.json", MODELSCOPE_CONFIGURATION)
    _write_json(speech_dir / "config.json", speech_config)
    _write_json(speech_dir / "preprocessor_config.json", SPEECH_TOKENIZER_PREPROCESSOR_CONFIG)
    _write_json(speech_dir / "configuration.json", SPEECH_TOKENIZER_MODELSCOPE_CONFIGURATION)
    write_text_tokenizer(out, spec.tokenizer)
    for name, content in spec.extra_files.items():
        _write_json(out / name, content)

    if check:
        check_text_tokenizer(out, config)
    return out

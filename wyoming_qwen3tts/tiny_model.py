"""Build tiny random-weight Qwen3-TTS models for tests and demos.

The model hub is out of reach, so tests and demos cannot have the real checkpoints. A tiny model built
here is a full model directory of the real classes (Qwen3TTSForConditionalGeneration and the 12 Hz
Qwen3TTSTokenizerV2 codec) that loads offline through `qwen_tts.Qwen3TTSModel.from_pretrained(dir)` and
runs every generate_* path of qwen-tts on a CPU in well under a second for a few frames (about 40 ms a
frame; with one torch thread: intra-op threads only add overhead on tensors this small).

Sizes shrink (talker: 2 layers, hidden 64, 4 heads / 2 KV heads of 16; code predictor: 2 layers; codec
decoder and Mimi encoder: 2 transformer layers, a few conv channels, and the encoder runs 16 quantizers,
the ones qwen-tts keeps, not 32; text vocabulary: 256 byte symbols, a few merges and the special tokens).
What the qwen-tts code depends on stays real: 16 code groups of 2048 codes, codec vocabulary 3072 with the
real special ids (pad 2148, bos 2149, eos 2150, think 2154-2157) and language ids, the CustomVoice speaker
table with its two dialect speakers, 24 kHz output at 1920 samples per frame, "0b6" size for base and
custom_voice and "1b7" for voice_design (qwen-tts drops instruct when `tts_model_size in "0b6"`).
voice_design also gets a code predictor narrower than the talker, as in the 1.7B models, so their
projection layer is exercised.

Weights are seeded (same seed, same files, same audio) and calibrated so the talker never emits EOS: a
generation always runs to max_new_tokens and, as qwen-tts drops the last sampled token, returns
max_new_tokens - 1 frames (see `model_builder`). generation_config.json is the real one with
max_new_tokens 40, so a call without arguments ends quickly.

    python -m wyoming_qwen3tts.tiny_model OUT --kind custom_voice|base|voice_design [--seed N]

`--size real-0.6b` (or `real-1.7b`) writes a random model with the real dimensions instead.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .model_builder import (
    KINDS,
    TRANSFORMERS_VERSION,
    ModelSpec,
    TextTokenizerSpec,
    apply_overrides,
    byte_symbols,
    deep_update,
    kind_settings,
    merges_for_words,
    qwen2_tokenizer_config,
    reference_spec,
    to_byte_level,
    write_model_dir,
)
from .real_configs import (
    CODEBOOK_SIZE,
    CODEC_SPECIAL_IDS,
    CODEC_VOCAB_SIZE,
    NUM_CODE_GROUPS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
)

SIZES = ("tiny", "real-0.6b", "real-1.7b")
TINY_MAX_NEW_TOKENS = 40

# Words that become one token each. "assistant" must: qwen-tts slices the chat template by position.
TINY_WORDS = ("assistant", "user", "system", " the", " and", "ing")
TINY_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
)

TINY_TALKER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "text_hidden_size": 32,
    # Sections sum to head_dim / 2, as [24, 20, 20] does for the real head_dim 128.
    "rope_scaling": {
        "interleaved": True,
        "mrope_section": [4, 2, 2],
        "rope_type": "default",
        "type": "default",
    },
}
TINY_CODE_PREDICTOR = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
# voice_design is a 1.7B model: its code predictor is narrower than the talker (1024 vs 2048).
TINY_VOICE_DESIGN_CODE_PREDICTOR = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
TINY_SPEAKER_ENCODER = {
    "mel_dim": 128,  # extract_speaker_embedding always computes 128 mel bins
    "enc_dim": 64,  # = talker hidden_size: the x-vector is fed to the talker as a codec embedding
    # The last entry must be the sum of the three middle ones (their outputs are concatenated).
    "enc_channels": [32, 32, 32, 32, 96],
    "enc_kernel_sizes": [5, 3, 3, 3, 1],
    "enc_dilations": [1, 2, 3, 4, 1],
    "enc_attention_channels": 16,
    "enc_res2net_scale": 8,
    "enc_se_channels": 16,
    "sample_rate": SAMPLE_RATE,
}


def tiny_text_tokenizer() -> tuple[TextTokenizerSpec, dict[str, int]]:
    """The tiny byte-level BPE tokenizer and the config ids of its special tokens."""
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols())}
    words = [to_byte_level(w) for w in TINY_WORDS]
    for word in words:  # every prefix becomes a token, so each word merges left to right
        for end in range(2, len(word) + 1):
            vocab.setdefault(word[:end], len(vocab))
    merges = merges_for_words(words, vocab)
    added = {len(vocab) + i: token for i, token in enumerate(TINY_SPECIAL_TOKENS)}
    ids = {token: i for i, token in added.items()}
    config_ids = {
        "im_start_token_id": ids["<|im_start|>"],
        "im_end_token_id": ids["<|im_end|>"],
        "tts_pad_token_id": ids["<tts_pad>"],
        "tts_bos_token_id": ids["<tts_text_bos>"],
        "tts_eos_token_id": ids["<tts_text_eod>"],
        "assistant_token_id": vocab["assistant"],
    }
    spec = TextTokenizerSpec(vocab=vocab, merges=merges, tokenizer_config=qwen2_tokenizer_config(added))
    return spec, config_ids


def _round_up(value: int, multiple: int = 64) -> int:
    return -(-value // multiple) * multiple


def tiny_speech_tokenizer_config() -> dict[str, Any]:
    """The codec config: the real keys and rates, tiny widths and depths."""
    return {
        "architectures": ["Qwen3TTSTokenizerV2Model"],
        "model_type": "qwen3_tts_tokenizer_12hz",
        "encoder_valid_num_quantizers": NUM_CODE_GROUPS,
        "input_sample_rate": SAMPLE_RATE,
        "output_sample_rate": SAMPLE_RATE,
        "decode_upsample_rate": SAMPLES_PER_FRAME,
        "encode_downsample_rate": SAMPLES_PER_FRAME,
        "decoder_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "latent_dim": 32,
            "codebook_dim": 16,
            "codebook_size": CODEBOOK_SIZE,
            "decoder_dim": 64,  # halved by each of the 4 upsample blocks: 64, 32, 16, 8, 4
            "hidden_act": "silu",
            "hidden_size": 32,
            "intermediate_size": 64,
            "layer_scale_initial_scale": 0.01,
            "max_position_embeddings": 8000,
            "head_dim": 16,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "num_quantizers": NUM_CODE_GROUPS,
            "num_semantic_quantizers": 1,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000,
            "semantic_codebook_size": 4096,
            "sliding_window": 72,
            # 8 * 5 * 4 * 3 * 2 * 2 = 1920 samples per frame, as in the real codec.
            "upsample_rates": [8, 5, 4, 3],
            "upsampling_ratios": [2, 2],
            "vector_quantization_hidden_dimension": 16,
        },
        "encoder_config": {
            "_frame_rate": 12.5,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "audio_channels": 1,
            "codebook_dim": 16,
            "codebook_size": CODEBOOK_SIZE,
            "compress": 2,
            "dilation_growth_rate": 2,
            "dtype": "float32",
            "head_dim": 16,
            "hidden_act": "gelu",
            "hidden_size": 32,
            "initializer_range": 0.02,
            "intermediate_size": 64,
            "kernel_size": 7,
            "last_kernel_size": 3,
            "layer_scale_initial_scale": 0.01,
            "max_position_embeddings": 8000,
            "norm_eps": 1e-05,
            "normalize": False,
            "num_attention_heads": 2,
            "num_filters": 4,  # doubled by each of the 4 downsampling stages: 4 ... 64
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "num_quantizers": NUM_CODE_GROUPS,  # the real 32 cost time; qwen-tts keeps the first 16
            "num_residual_layers": 1,
            "num_semantic_quantizers": 1,
            "pad_mode": "constant",
            "residual_kernel_size": 3,
            "rope_theta": 10000.0,
            "sampling_rate": SAMPLE_RATE,
            "sliding_window": 250,
            "transformers_version": "4.57.0.dev0",
            "trim_right_ratio": 1.0,
            "upsample_groups": 32,  # = hidden_size, as 512 is in the real codec
            # 8 * 6 * 5 * 4 = 960, then compress 2: one frame per 1920 samples.
            "upsampling_ratios": [8, 6, 5, 4],
            "use_cache": False,
            "use_causal_conv": True,
            "use_conv_shortcut": False,
            "use_streaming": False,
            "vector_quantization_hidden_dimension": 16,
        },
    }


def tiny_spec(kind: str) -> ModelSpec:
    """The spec of the tiny model of the given kind ("custom_voice", "base" or "voice_design")."""
    settings = kind_settings(kind)
    tokenizer, token_ids = tiny_text_tokenizer()
    text_vocab_size = _round_up(len(tokenizer.vocab) + len(TINY_SPECIAL_TOKENS))
    code_predictor = {
        "model_type": "qwen3_tts_talker_code_predictor",
        "attention_bias": False,
        "attention_dropout": 0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 65536,
        "max_window_layers": 28,
        "num_code_groups": NUM_CODE_GROUPS,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": CODEBOOK_SIZE,
        **TINY_CODE_PREDICTOR,
    }
    if kind == "voice_design":
        code_predictor.update(TINY_VOICE_DESIGN_CODE_PREDICTOR)
    talker = {
        "model_type": "qwen3_tts_talker",
        "attention_bias": False,
        "attention_dropout": 0,
        "code_predictor_config": code_predictor,
        **CODEC_SPECIAL_IDS,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "num_code_groups": NUM_CODE_GROUPS,
        "position_id_per_seconds": 13,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000,
        "sliding_window": None,
        "text_vocab_size": text_vocab_size,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": CODEC_VOCAB_SIZE,
        **copy.deepcopy(TINY_TALKER),
    }
    config: dict[str, Any] = {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        **token_ids,
        "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": "1b7" if kind == "voice_design" else "0b6",
        "talker_config": talker,
        "transformers_version": TRANSFORMERS_VERSION,
    }
    if kind == "base":
        config["speaker_encoder_config"] = dict(TINY_SPEAKER_ENCODER)
    deep_update(config, settings)
    generation_config = {
        "do_sample": True,
        "repetition_penalty": 1.05,
        "temperature": 0.9,
        "top_p": 1.0,
        "top_k": 50,
        "subtalker_dosample": True,
        "subtalker_temperature": 0.9,
        "subtalker_top_p": 1.0,
        "subtalker_top_k": 50,
        "max_new_tokens": TINY_MAX_NEW_TOKENS,
    }
    return ModelSpec(
        config=config,
        speech_tokenizer_config=tiny_speech_tokenizer_config(),
        tokenizer=tokenizer,
        generation_config=generation_config,
    )


def build_model(
    out_dir: Path | str,
    kind: str,
    size: str = "tiny",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write a random-weight model of the given kind and size to out_dir; return its path.

    size is "tiny", "real-0.6b" or "real-1.7b" (the last two with the real dimensions, see
    `model_builder.reference_spec`). overrides deep-merges into the spec's dicts, e.g.
    {"generation_config": {"max_new_tokens": 100}, "config": {"talker_config": {"num_hidden_layers": 4}}}.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}, expected one of {', '.join(SIZES)}")
    spec = tiny_spec(kind) if size == "tiny" else reference_spec(kind, size)
    return write_model_dir(out_dir, apply_overrides(spec, overrides), seed=seed)


def build_tiny_model(out_dir: Path | str, kind: str, seed: int = 0) -> Path:
    """Write the tiny model of the given kind to out_dir; return its path."""
    return build_model(out_dir, kind, size="tiny", seed=seed)


def main(argv: list[str] | None = None) -> None:
    """Command line: build a model directory."""
    parser = argparse.ArgumentParser(
        prog="python -m wyoming_qwen3tts.tiny_model",
        description="Write a random-weight Qwen3-TTS model directory that loads offline.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--kind", choices=KINDS, required=True, help="checkpoint kind")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--size", choices=SIZES, default="tiny", help="dimensions (default tiny)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    path = build_model(args.out_dir, args.kind, size=args.size, seed=args.seed)
    elapsed = time.monotonic() - start
    print(f"wrote {args.size} {args.kind} model (seed {args.seed}) to {path} in {elapsed:.1f}s")


if __name__ == "__main__":
    main()

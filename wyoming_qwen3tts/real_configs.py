"""The public configuration of the Qwen3-TTS 12 Hz checkpoints, as data.

`model_builder.reference_spec` builds random-weight models with the real dimensions from these values
(`script/benchmark`), so a clone of this project can benchmark without the model hub or any folder
outside it. They are the values of the public config.json, speech_tokenizer/config.json,
generation_config.json and tokenizer_config.json of the Qwen3-TTS-12Hz models, written out here as the
fields that differ from the generic defaults every transformers config carries:

- 1.7B: Qwen3-TTS-12Hz-1.7B-Base (and -CustomVoice, which differs only in its speaker table and two
  dialect language ids, and drops speaker_encoder_config);
- 0.6B: the same with four values changed, from public descriptions of the 0.6B checkpoints:
  `tts_model_size` "0b6", speaker encoder `enc_dim` 1024, talker `hidden_size` 1024 and
  `intermediate_size` 3072 (built with these, model.safetensors in bfloat16 has the published size of
  the real one, 1.83 GB; tests/test_real_configs.py checks);
- the codec (speech tokenizer), generation and text-tokenizer configs are the same in every 12 Hz model.

The text vocabulary itself (vocab.json, 151643 byte-level BPE tokens) is not here: `model_builder`
writes one of the same size with the same special tokens and ids (see `model_builder.real_size_vocab`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920  # 12.5 frames per second at 24 kHz
NUM_CODE_GROUPS = 16
CODEBOOK_SIZE = 2048
CODEC_VOCAB_SIZE = 3072

# Codec-token ids of the talker, as in every real 12 Hz config.
CODEC_SPECIAL_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
LANGUAGE_IDS = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
}
# The CustomVoice checkpoints add the dialects their two dialect speakers use.
DIALECT_LANGUAGE_IDS = {"beijing_dialect": 2074, "sichuan_dialect": 2062}
CUSTOM_VOICE_SPEAKERS = {
    "serena": 3066,
    "vivian": 3065,
    "uncle_fu": 3010,
    "ryan": 3061,
    "aiden": 2861,
    "ono_anna": 2873,
    "sohee": 2864,
    "eric": 2875,
    "dylan": 2878,
}
CUSTOM_VOICE_DIALECTS: dict[str, str | bool] = {name: False for name in CUSTOM_VOICE_SPEAKERS}
CUSTOM_VOICE_DIALECTS.update(eric="sichuan_dialect", dylan="beijing_dialect")


@dataclass(frozen=True)
class RealSize:
    """The values that tell the 0.6B and 1.7B checkpoints apart."""

    tts_model_size: str
    hidden_size: int  # talker, and the speaker encoder's enc_dim (its x-vector is a talker embedding)
    intermediate_size: int


REAL_SIZES = {
    "real-0.6b": RealSize(tts_model_size="0b6", hidden_size=1024, intermediate_size=3072),
    "real-1.7b": RealSize(tts_model_size="1b7", hidden_size=2048, intermediate_size=6144),
}

# Text tokenizer: Qwen2's byte-level BPE, 151643 regular tokens, then the added tokens from 151643 up.
TEXT_REGULAR_TOKENS = 151643
TEXT_VOCAB_SIZE = 151936  # rows of the talker's text embedding (a multiple of 128 above the tokenizer)
ASSISTANT_TOKEN_ID = 77091  # "assistant", which qwen-tts finds at a fixed place of its chat template
# (content, special) of each added token, from id 151643 up.
ADDED_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
)
EXTRA_SPECIAL_TOKENS = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}


def added_token_id(content: str) -> int:
    """The id of an added token ("<|im_start|>" is 151644)."""
    return TEXT_REGULAR_TOKENS + [c for c, _ in ADDED_TOKENS].index(content)


def text_tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json of the real checkpoints."""
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    additional = [
        "<|im_start|>",
        "<|im_end|>",
        *(c for c, _ in ADDED_TOKENS[3:14]),  # object_ref_start ... video_pad
        "<|audio_start|>",
        "<|audio_end|>",
        "<tts_pad>",
        "<tts_text_bos>",
        "<tts_text_bos_single>",
        "<|audio_pad|>",
    ]
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(TEXT_REGULAR_TOKENS + i): {"content": content, **entry, "special": special}
            for i, (content, special) in enumerate(ADDED_TOKENS)
        },
        "additional_special_tokens": additional,
        "extra_special_tokens": dict(EXTRA_SPECIAL_TOKENS),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
        **EXTRA_SPECIAL_TOKENS,
    }


def _code_predictor_config() -> dict[str, Any]:
    """The multi-token code predictor: 5 layers of hidden 1024 in both sizes."""
    return {
        "model_type": "qwen3_tts_talker_code_predictor",
        "attention_bias": False,
        "attention_dropout": 0,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_types": ["full_attention"] * 5,
        "max_position_embeddings": 65536,
        "max_window_layers": 28,
        "num_attention_heads": 16,
        "num_code_groups": NUM_CODE_GROUPS,
        "num_hidden_layers": 5,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": CODEBOOK_SIZE,
    }


def model_config(size: str) -> dict[str, Any]:
    """config.json of the Base checkpoint of a real size ("real-0.6b" or "real-1.7b")."""
    if size not in REAL_SIZES:
        raise ValueError(f"unknown real size {size!r}, expected one of {', '.join(REAL_SIZES)}")
    dims = REAL_SIZES[size]
    talker = {
        "model_type": "qwen3_tts_talker",
        "attention_bias": False,
        "attention_dropout": 0,
        "code_predictor_config": _code_predictor_config(),
        **CODEC_SPECIAL_IDS,
        "codec_language_id": dict(LANGUAGE_IDS),
        "spk_id": {},
        "spk_is_dialect": {},
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": dims.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": dims.intermediate_size,
        "max_position_embeddings": 32768,
        "num_attention_heads": 16,
        "num_code_groups": NUM_CODE_GROUPS,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "position_id_per_seconds": 13,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "interleaved": True,
            "mrope_section": [24, 20, 20],
            "rope_type": "default",
            "type": "default",
        },
        "rope_theta": 1000000,
        "sliding_window": None,
        "text_hidden_size": 2048,
        "text_vocab_size": TEXT_VOCAB_SIZE,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": CODEC_VOCAB_SIZE,
    }
    return {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "assistant_token_id": ASSISTANT_TOKEN_ID,
        "im_end_token_id": added_token_id("<|im_end|>"),
        "im_start_token_id": added_token_id("<|im_start|>"),
        "tts_bos_token_id": added_token_id("<tts_text_bos>"),
        "tts_eos_token_id": added_token_id("<tts_text_eod>"),
        "tts_pad_token_id": added_token_id("<tts_pad>"),
        "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": dims.tts_model_size,
        "tts_model_type": "base",
        "speaker_encoder_config": {"enc_dim": dims.hidden_size, "sample_rate": SAMPLE_RATE},
        "talker_config": talker,
    }


_SPEECH_TOKENIZER_CONFIG: dict[str, Any] = {
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
        "latent_dim": 1024,
        "codebook_dim": 512,
        "codebook_size": CODEBOOK_SIZE,
        "decoder_dim": 1536,
        "hidden_act": "silu",
        "hidden_size": 512,
        "intermediate_size": 1024,
        "layer_scale_initial_scale": 0.01,
        "max_position_embeddings": 8000,
        "head_dim": 64,
        "num_attention_heads": 16,
        "num_hidden_layers": 8,
        "num_key_value_heads": 16,
        "num_quantizers": NUM_CODE_GROUPS,
        "num_semantic_quantizers": 1,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000,
        "semantic_codebook_size": 4096,
        "sliding_window": 72,
        "upsample_rates": [8, 5, 4, 3],
        "upsampling_ratios": [2, 2],
        "vector_quantization_hidden_dimension": 512,
    },
    "encoder_config": {
        "_frame_rate": 12.5,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "audio_channels": 1,
        "codebook_dim": 256,
        "codebook_size": CODEBOOK_SIZE,
        "compress": 2,
        "dilation_growth_rate": 2,
        "dtype": "float32",
        "head_dim": 64,
        "hidden_act": "gelu",
        "hidden_size": 512,
        "initializer_range": 0.02,
        "intermediate_size": 2048,
        "kernel_size": 7,
        "last_kernel_size": 3,
        "layer_scale_initial_scale": 0.01,
        "max_position_embeddings": 8000,
        "norm_eps": 1e-05,
        "normalize": False,
        "num_attention_heads": 8,
        "num_filters": 64,
        "num_hidden_layers": 8,
        "num_key_value_heads": 8,
        "num_quantizers": 32,
        "num_residual_layers": 1,
        "num_semantic_quantizers": 1,
        "pad_mode": "constant",
        "residual_kernel_size": 3,
        "rope_theta": 10000.0,
        "sampling_rate": SAMPLE_RATE,
        "sliding_window": 250,
        "transformers_version": "4.57.0.dev0",
        "trim_right_ratio": 1.0,
        "upsample_groups": 512,
        "upsampling_ratios": [8, 6, 5, 4],
        "use_cache": False,
        "use_causal_conv": True,
        "use_conv_shortcut": False,
        "use_streaming": False,
        "vector_quantization_hidden_dimension": 256,
    },
}

_GENERATION_CONFIG: dict[str, Any] = {
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.9,
    "top_p": 1.0,
    "top_k": 50,
    "subtalker_dosample": True,
    "subtalker_temperature": 0.9,
    "subtalker_top_p": 1.0,
    "subtalker_top_k": 50,
    "max_new_tokens": 8192,
}


def speech_tokenizer_config() -> dict[str, Any]:
    """speech_tokenizer/config.json (the 12 Hz codec), the same in every model."""
    return copy.deepcopy(_SPEECH_TOKENIZER_CONFIG)


def generation_config() -> dict[str, Any]:
    """generation_config.json, the same in every model."""
    return copy.deepcopy(_GENERATION_CONFIG)

"""The talker's prompt for one utterance, built from embedding look-ups and the model's config files.

qwen-tts 0.1.1 builds the prompt inside Qwen3TTSForConditionalGeneration.generate, which needs the whole
torch model in memory. A backend that does not load it (OpenVINO, issue 8) has only tables read from disk,
so PromptBuilder assembles the same embeddings from three look-ups (`EmbeddingTables`, engine/seams.py),
config.json, generation_config.json and the text tokenizer, in qwen-tts's order of operations: with the
torch tables (`TorchEmbeddingTables`) the result equals what qwen-tts hands its talker, bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .loop import SamplingOptions, TalkerPrompt
from .seams import CloneReference, EmbeddingTables

KINDS = ("custom_voice", "base", "voice_design")
CALLS = {
    "custom_voice": "generate_custom_voice",
    "base": "generate_voice_clone",
    "voice_design": "generate_voice_design",
}
# qwen-tts's generate_voice_clone feeds the text one token per frame; the other two put it all in the prompt.
NON_STREAMING_DEFAULT = {"custom_voice": True, "base": False, "voice_design": True}
# _merge_generate_kwargs: what applies when neither the call nor generation_config.json names a value.
HARD_GENERATE_DEFAULTS: dict[str, Any] = {
    "do_sample": True,
    "top_k": 50,
    "top_p": 1.0,
    "temperature": 0.9,
    "repetition_penalty": 1.05,
    "subtalker_dosample": True,
    "subtalker_top_k": 50,
    "subtalker_top_p": 1.0,
    "subtalker_temperature": 0.9,
    "max_new_tokens": 2048,
}
# The chat template qwen-tts wraps texts in, and the token counts it slices off by position:
# "<|im_start|>assistant\n" (3) before the text, "<|im_end|>\n<|im_start|>assistant\n" (5) after it,
# "<|im_end|>\n" (2) after a clone's reference transcript.
ROLE_TOKENS = 3
TEXT_TAIL_TOKENS = 5
REF_TAIL_TOKENS = 2


def assistant_text(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"


def ref_text_template(text: str) -> str:
    return f"<|im_start|>assistant\n{text}<|im_end|>\n"


def instruct_text(instruct: str) -> str:
    return f"<|im_start|>user\n{instruct}<|im_end|>\n"


class TorchEmbeddingTables(EmbeddingTables):
    """EmbeddingTables on a loaded qwen-tts model (Qwen3TTSModel.model); text rows are projected on demand."""

    def __init__(self, model: Any) -> None:
        talker = model.talker
        self._text_embedding = talker.get_text_embeddings()
        self._text_projection = talker.text_projection
        # The codec rows are looked up 31 times a frame, right after steps that swept the caches: on the
        # weights themselves (detached: no autograd, whatever the caller's mode), not through the modules
        # and a no_grad per call (1.05 against 0.47 ms a frame, AMX Xeon).
        self._codec_rows = talker.get_input_embeddings().weight.detach()
        self._predictor_rows = [
            table.weight.detach() for table in talker.code_predictor.get_input_embeddings()
        ]

    @torch.no_grad()
    def text(self, ids: torch.Tensor) -> torch.Tensor:
        # Projected as one batch, as qwen-tts does: row by row would differ in the last bits.
        return self._text_projection(self._text_embedding(ids.unsqueeze(0)))

    def codec(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids.unsqueeze(0), self._codec_rows)

    def predictor_codec(self, group: int, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids.unsqueeze(0), self._predictor_rows[group])


class StoredEmbeddingTables(EmbeddingTables):
    """EmbeddingTables on plain row tables (e.g. memory-mapped from an export): text rows already projected.

    A row projected alone may differ from qwen-tts's batched projection in the last bits (about 1e-7).
    """

    def __init__(
        self, text: torch.Tensor, codec: torch.Tensor, predictor_codecs: Sequence[torch.Tensor]
    ) -> None:
        self._text = text  # [text vocab, H]
        self._codec = codec  # [codec vocab, H]
        self._predictor_codecs = list(predictor_codecs)  # 15 x [codebook size, H]

    @classmethod
    def from_torch(cls, model: Any) -> StoredEmbeddingTables:
        """The tables of a loaded qwen-tts model, every text row projected once."""
        talker = model.talker
        with torch.no_grad():
            text = talker.text_projection(talker.get_text_embeddings().weight)
            predictors = [e.weight.detach() for e in talker.code_predictor.get_input_embeddings()]
            return cls(text, talker.get_input_embeddings().weight.detach(), predictors)

    # Rows come out as float32 whatever the tables are stored in (an export keeps them in float16).
    def text(self, ids: torch.Tensor) -> torch.Tensor:
        return self._text[ids].float().unsqueeze(0)

    def codec(self, ids: torch.Tensor) -> torch.Tensor:
        return self._codec[ids].float().unsqueeze(0)

    def predictor_codec(self, group: int, ids: torch.Tensor) -> torch.Tensor:
        return self._predictor_codecs[group][ids].float().unsqueeze(0)


def load_text_tokenizer(model_dir: Path | str) -> Any:
    """The model directory's text tokenizer, loaded as qwen-tts's processor loads it.

    fix_mistral_regex=True matters: for a vocabulary over 100000 tokens whose config.json names
    transformers 4.57.3, transformers then swaps the Qwen2 split regex for its "fixed Mistral" one.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), fix_mistral_regex=True)


def merge_generate_kwargs(
    generation_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """qwen-tts's _merge_generate_kwargs: a value given (not None) wins, then generation_config.json's."""
    merged = dict(overrides or {})
    for name, default in HARD_GENERATE_DEFAULTS.items():
        given = merged.get(name)
        if given is None:
            merged[name] = generation_config[name] if name in generation_config else default
    return merged


def _ids(values: Sequence[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


class PromptBuilder:
    """Builds TalkerPrompts the way qwen-tts 0.1.1 does, from EmbeddingTables and the model's files."""

    def __init__(
        self,
        tables: EmbeddingTables,
        config: Mapping[str, Any],
        generation_config: Mapping[str, Any],
        tokenizer: Any,
    ) -> None:
        self.tables = tables
        self.model_config = dict(config)
        self.generation_config = dict(generation_config)
        self.tokenizer = tokenizer
        talker = config["talker_config"]
        self.model_kind: str = config["tts_model_type"]
        self.follows_instructions = _follows_instructions(config.get("tts_model_size"))
        self.speakers: dict[str, int | list[int]] = {
            k.lower(): v for k, v in (talker.get("spk_id") or {}).items()
        }
        self.dialects: dict[str, str | bool] = {
            k.lower(): v for k, v in (talker.get("spk_is_dialect") or {}).items()
        }
        self.language_ids: dict[str, int] = dict(talker.get("codec_language_id") or {})
        # qwen-tts accepts "auto" and the languages that are not dialects; a dialect comes with its speaker.
        self.languages = ("auto", *(lang for lang in self.language_ids if "dialect" not in lang))
        self.num_code_groups: int = talker["num_code_groups"]
        self._codec_ids = {
            name: talker[f"codec_{name}_id"]
            for name in ("pad", "bos", "nothink", "think", "think_bos", "think_eos")
        }
        self._text_specials = _ids(
            [config["tts_bos_token_id"], config["tts_eos_token_id"], config["tts_pad_token_id"]]
        )

    @classmethod
    def from_model_dir(cls, tables: EmbeddingTables, model_dir: Path | str) -> PromptBuilder:
        """A builder from config.json, generation_config.json and the tokenizer files in model_dir."""
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        generation = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
        return cls(tables, config, generation, load_text_tokenizer(model_dir))

    def tokenize(self, text: str) -> torch.Tensor:
        """Token ids [n] of an already templated text (the processor adds no special tokens)."""
        return _ids(self.tokenizer(text)["input_ids"])

    @torch.no_grad()
    def build(
        self,
        text: str,
        language: str,
        *,
        speaker: str | None = None,
        instruct: str | None = None,
        clone: CloneReference | None = None,
        kind: str,
        sampling_overrides: Mapping[str, Any] | None = None,
    ) -> TalkerPrompt:
        """The prompt qwen-tts's generate_* call of this kind builds for one text (batch size 1)."""
        self._check_call(kind, speaker, instruct, clone)
        language_id = self._language_id(language, speaker)  # languages first, then speakers, as qwen-tts
        if speaker and speaker.lower() not in self.speakers:
            raise ValueError(
                f"unsupported speaker {speaker!r}; supported: {', '.join(sorted(self.speakers))}"
            )
        if kind == "custom_voice" and not self.follows_instructions:
            instruct = None  # as qwen-tts does for the 0.6B CustomVoice model
        tables = self.tables
        text_ids = self.tokenize(assistant_text(text))
        tts_bos, tts_eos, tts_pad = tables.text(self._text_specials).chunk(3, dim=1)

        # The codec side of the prefix: think tags (with the language), speaker, pad, bos.
        c = self._codec_ids
        if language_id is None:
            tags = [c["nothink"], c["think_bos"], c["think_eos"]]
        else:
            tags = [c["think"], c["think_bos"], language_id, c["think_eos"]]
        pad_bos = tables.codec(_ids([c["pad"], c["bos"]]))
        speaker_row = self._speaker_row(speaker, clone, pad_bos.dtype)
        codec_prefix = torch.cat([tables.codec(_ids(tags)), *speaker_row, pad_bos], dim=1)

        # Text side: the role tokens, then tts_pad over the codec prefix and tts_bos over its last but one.
        role = tables.text(text_ids[:ROLE_TOKENS])
        text_prefix = torch.cat((tts_pad.expand(-1, codec_prefix.shape[1] - 2, -1), tts_bos), dim=1)
        parts = [role, text_prefix + codec_prefix[:, :-1]]
        if instruct:
            parts.insert(0, tables.text(self.tokenize(instruct_text(instruct))))
        # Up to here the prompt is the voice's and the language's alone: every text of it starts so.
        shared = sum(part.shape[1] for part in parts)

        body_ids = text_ids[ROLE_TOKENS:-TEXT_TAIL_TOKENS]
        if clone is not None and clone.ref_code is not None:
            assert clone.ref_text  # _check_call
            ref_ids = self.tokenize(ref_text_template(clone.ref_text))[ROLE_TOKENS:-REF_TAIL_TOKENS]
            in_context, trailing = self._in_context(
                ref_ids, body_ids, clone.ref_code, tts_pad, tts_eos, NON_STREAMING_DEFAULT[kind]
            )
            parts.append(in_context)
            # Its first rows hold the reference transcript's tokens (over the reference's codes), the
            # text's only after them.
            shared += min(ref_ids.shape[0], in_context.shape[1])
        elif NON_STREAMING_DEFAULT[kind]:
            # All the text at once, each token over codec pad, then tts_pad over codec bos.
            text_rows = torch.cat((tables.text(body_ids), tts_eos), dim=1)
            parts.append(text_rows + tables.codec(_ids([c["pad"]] * text_rows.shape[1])))
            parts.append(tts_pad + tables.codec(_ids([c["bos"]])))
            trailing = tts_pad
        else:
            # The first text token over codec bos; the rest (and tts_eos) follow one per frame.
            first = text_ids[ROLE_TOKENS : ROLE_TOKENS + 1]
            parts.append(tables.text(first) + codec_prefix[:, -1:])
            trailing = torch.cat((tables.text(text_ids[ROLE_TOKENS + 1 : -TEXT_TAIL_TOKENS]), tts_eos), dim=1)
        merged = merge_generate_kwargs(self.generation_config, sampling_overrides)
        return TalkerPrompt(
            embeds=torch.cat(parts, dim=1),
            trailing_text=trailing,
            pad_embed=tts_pad,
            sampling=SamplingOptions.from_generate_kwargs(merged),
            shared=shared,
        )

    def _check_call(
        self, kind: str, speaker: str | None, instruct: str | None, clone: CloneReference | None
    ) -> None:
        """Refuse what the qwen-tts call of this kind refuses or cannot be given."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}, expected one of {', '.join(KINDS)}")
        if kind != self.model_kind:
            raise ValueError(f"a {self.model_kind} model does not support {CALLS[kind]}")
        if speaker and kind != "custom_voice":
            raise ValueError(f"a {kind} model has no preset speakers (asked for {speaker!r})")
        if instruct and kind == "base":
            raise ValueError("a base model takes no instruction")
        if (clone is not None) != (kind == "base"):
            raise ValueError("a clone reference is what a base model speaks with, and only a base model")
        if clone is not None and clone.ref_code is not None and not clone.ref_text:
            raise ValueError("in-context cloning (ref_code) needs the reference transcript (ref_text)")

    def _language_id(self, language: str, speaker: str | None) -> int | None:
        """The codec language id, or None for auto; a dialect speaker's dialect for auto and Chinese."""
        name = language.lower()
        if name not in self.languages:
            raise ValueError(
                f"unsupported language {language!r}; supported: {', '.join(sorted(self.languages))}"
            )
        language_id = None if name == "auto" else self.language_ids[name]
        dialect = self.dialects.get(speaker.lower(), False) if speaker else False
        if name in ("chinese", "auto") and dialect is not False:
            language_id = self.language_ids[str(dialect)]
        return language_id

    def _speaker_row(
        self, speaker: str | None, clone: CloneReference | None, dtype: torch.dtype
    ) -> list[torch.Tensor]:
        """The speaker's codec-side row [1, 1, H] (none for design and no speaker)."""
        if clone is not None:
            # qwen-tts casts the x-vector to the talker's dtype, which is the codec table's.
            return [clone.speaker_embedding.to(dtype).view(1, 1, -1)]
        if speaker:
            spk_id = torch.tensor(self.speakers[speaker.lower()], dtype=torch.long).reshape(-1)
            return [self.tables.codec(spk_id)]
        return []

    def _in_context(
        self,
        ref_ids: torch.Tensor,
        text_ids: torch.Tensor,
        ref_code: torch.Tensor,
        tts_pad: torch.Tensor,
        tts_eos: torch.Tensor,
        non_streaming: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """qwen-tts's generate_icl_prompt: reference transcript + text against codec bos + reference codes.

        Returns the prompt's tail and the trailing text.
        """
        tables = self.tables
        text_rows = torch.cat((tables.text(torch.cat([ref_ids, text_ids])), tts_eos), dim=1)
        # Each reference frame is the sum of its 16 codebook rows, laid out and summed as qwen-tts does
        # ([T, 16, H] over the middle axis): torch sums in group order either way today, but need not.
        ref_code = ref_code.long()
        rows = [tables.codec(ref_code[:, 0])] + [
            tables.predictor_codec(group - 1, ref_code[:, group]) for group in range(1, self.num_code_groups)
        ]
        frames = torch.cat([r.transpose(0, 1) for r in rows], dim=1).sum(1).unsqueeze(0)
        codec_rows = torch.cat([tables.codec(_ids([self._codec_ids["bos"]])), frames], dim=1)
        n_text, n_codec = text_rows.shape[1], codec_rows.shape[1]
        if non_streaming:
            pads = tables.codec(_ids([self._codec_ids["pad"]] * n_text))
            return torch.cat([text_rows + pads, codec_rows + tts_pad], dim=1), tts_pad
        if n_text > n_codec:
            return text_rows[:, :n_codec] + codec_rows, text_rows[:, n_codec:]
        padded = torch.cat([text_rows, tts_pad.expand(-1, n_codec - n_text, -1)], dim=1)
        return padded + codec_rows, tts_pad


def _follows_instructions(model_size: Any) -> bool:
    """False where qwen-tts's generate_custom_voice drops instruct: `tts_model_size in "0b6"` (0.6B)."""
    return not (isinstance(model_size, str) and model_size in "0b6")

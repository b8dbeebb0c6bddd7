"""Our own generation loop: talker step -> code predictor -> one frame of 16 codes, yielded at once.

qwen-tts nests a Hugging Face generate() for the code predictor inside every
talker step and returns codes only when the utterance is done. Here a
backend's steps (engine/steps.py) run the two transformer stacks one token at
a time, and each frame is yielded as soon as its 16 codes exist, so audio can
be decoded while the rest is still generated. The prompt comes from
engine/prompt.py; drawing codes and the rules around them live here, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .seams import ModelSteps

if TYPE_CHECKING:
    from .prompt import EmbeddingTables

# Qwen3-TTS suppresses the talker's top 1024 ids (control tokens) except EOS, and EOS in the first frames.
CONTROL_TOKENS = 1024
MIN_FRAMES = 2


@dataclass(frozen=True)
class SamplingOptions:
    """How codes are drawn: the talker's (codebook 0) and the code predictor's (codebooks 1..15)."""

    do_sample: bool = True
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 0.9
    repetition_penalty: float = 1.05
    subtalker_do_sample: bool = True
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    subtalker_temperature: float = 0.9

    @classmethod
    def from_generate_kwargs(cls, kwargs: dict[str, Any]) -> SamplingOptions:
        """Read the options qwen-tts merged from generation_config.json and the call."""
        return cls(
            do_sample=bool(kwargs.get("do_sample", True)),
            top_k=int(kwargs.get("top_k", 50)),
            top_p=float(kwargs.get("top_p", 1.0)),
            temperature=float(kwargs.get("temperature", 0.9)),
            repetition_penalty=float(kwargs.get("repetition_penalty", 1.05)),
            subtalker_do_sample=bool(kwargs.get("subtalker_dosample", True)),
            subtalker_top_k=int(kwargs.get("subtalker_top_k", 50)),
            subtalker_top_p=float(kwargs.get("subtalker_top_p", 1.0)),
            subtalker_temperature=float(kwargs.get("subtalker_temperature", 0.9)),
        )


@dataclass
class TalkerPrompt:
    """What the talker starts from: prompt embeddings, text still to be fed one per frame, the pad."""

    embeds: torch.Tensor  # [1, T, H]
    trailing_text: torch.Tensor  # [1, N, H]
    pad_embed: torch.Tensor  # [1, 1, H]
    sampling: SamplingOptions


def _pick(logits: torch.Tensor, do_sample: bool, top_k: int, top_p: float, temperature: float, rng) -> int:
    """Draw one id from [V] float logits the way Hugging Face's warpers do (or take the argmax)."""
    if not do_sample:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative <= 1 - top_p
        remove[-1] = False
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=rng))


class FrameGenerator:
    """Turns a TalkerPrompt into frames of 16 codes, one talker step + 15 predictor steps per frame.

    The backend's steps compute; drawing codes, the repetition penalty, the
    suppressed control tokens and EOS happen here, once for every backend.
    """

    def __init__(self, steps: ModelSteps, tables: EmbeddingTables) -> None:
        self.steps = steps
        self.tables = tables
        layout = steps.layout
        self.eos = layout.eos
        self.num_groups = layout.num_groups
        suppressed = torch.zeros(layout.vocab_size, dtype=torch.bool)
        suppressed[layout.vocab_size - CONTROL_TOKENS :] = True
        suppressed[self.eos] = False
        self.suppressed = suppressed

    def _penalized(self, logits: torch.Tensor, history: list[int], sampling: SamplingOptions) -> torch.Tensor:
        """The talker's logits after the repetition penalty, suppressed tokens and the early-EOS rule."""
        if sampling.repetition_penalty != 1.0 and history:
            seen = torch.tensor(sorted(set(history)))
            scores = logits[seen]
            logits[seen] = torch.where(
                scores < 0, scores * sampling.repetition_penalty, scores / sampling.repetition_penalty
            )
        logits = logits.masked_fill(self.suppressed, float("-inf"))
        if len(history) < MIN_FRAMES:
            logits[self.eos] = float("-inf")
        return logits

    def _predict_rest(
        self,
        hidden: torch.Tensor,
        code0: int,
        sampling: SamplingOptions,
        rng,
        cache: Any,
        forced: list[int] | None = None,
        record: list[torch.Tensor] | None = None,
    ) -> list[int]:
        """Codebooks 1..15 for one frame from the talker's hidden state and codebook 0.

        forced, if given, replaces the drawn codes (teacher forcing); record collects the logits.
        """
        steps = self.steps
        first = self.tables.codec(torch.tensor([code0])).to(hidden.dtype)
        x = torch.cat((hidden, first), dim=1)
        start = 0
        codes = []
        for group in range(self.num_groups - 1):
            logits = steps.predictor(x, start, cache, group)
            start += x.shape[1]
            if record is not None:
                record.append(logits)
            if forced is not None:
                code = forced[group]
            else:
                code = _pick(
                    logits,
                    sampling.subtalker_do_sample,
                    sampling.subtalker_top_k,
                    sampling.subtalker_top_p,
                    sampling.subtalker_temperature,
                    rng,
                )
            codes.append(code)
            if group < self.num_groups - 2:
                x = self.tables.predictor_codec(group, torch.tensor([code])).to(hidden.dtype)
        return codes

    @torch.inference_mode()
    def frames(
        self,
        prompt: TalkerPrompt,
        max_frames: int,
        seed: int | None = None,
        forced: torch.Tensor | None = None,
        record: list[torch.Tensor] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield one LongTensor [16] per frame until EOS or max_frames.

        forced [frames, 16] makes every code the given one (teacher forcing, to compare the
        logits of two precisions on the same path); record then collects all logits, in order.
        """
        if forced is not None:
            max_frames = min(max_frames, forced.shape[0])
        steps = self.steps
        sampling = prompt.sampling
        rng = None
        if seed is not None:
            rng = torch.Generator().manual_seed(seed)
        embeds = prompt.embeds
        trailing = prompt.trailing_text
        pad = prompt.pad_embed
        prompt_len = embeds.shape[1]
        talker_cache = steps.new_talker_cache(prompt_len + max_frames + 1)
        predictor_cache = steps.new_predictor_cache()
        logits, hidden = steps.talker(embeds, 0, talker_cache)
        history: list[int] = []
        position = prompt_len
        for step in range(max_frames):
            logits = self._penalized(logits, history, sampling)
            if record is not None:
                record.append(logits)
            if forced is not None:
                code0 = int(forced[step, 0])
            else:
                code0 = _pick(
                    logits, sampling.do_sample, sampling.top_k, sampling.top_p, sampling.temperature, rng
                )
            if code0 == self.eos:
                return
            history.append(code0)
            rest = self._predict_rest(
                hidden,
                code0,
                sampling,
                rng,
                predictor_cache,
                None if forced is None else forced[step, 1:].tolist(),
                record,
            )
            yield torch.tensor([code0, *rest])
            if step == max_frames - 1:
                return
            x = self.tables.codec(torch.tensor([code0]))
            for group, code in enumerate(rest):
                x = x + self.tables.predictor_codec(group, torch.tensor([code]))
            x = x + (trailing[:, step : step + 1] if step < trailing.shape[1] else pad)
            logits, hidden = steps.talker(x, position, talker_cache)
            position += 1

"""Our own generation loop: talker step -> code predictor -> one frame of 16 codes, yielded at once.

qwen-tts nests a Hugging Face generate() for the code predictor inside every
talker step and returns codes only when the utterance is done. Here a
backend's steps (`ModelSteps`, engine/seams.py) run the two transformer stacks
one token at a time, and each frame is yielded as soon as its 16 codes exist,
so audio can be decoded while the rest is still generated. The prompt comes
from engine/prompt.py; drawing codes and the rules around them live here, once.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .seams import EmbeddingTables, ModelSteps

# Qwen3-TTS suppresses the talker's top 1024 ids (control tokens) except EOS, and EOS in the first frames.
CONTROL_TOKENS = 1024
MIN_FRAMES = 2
# Prompts started together share a talker step up to this many tokens in all: a step's activations stay
# those of one long prompt (a cloned voice's reference transcript and codes run to hundreds of tokens).
JOINED_PROMPT_TOKENS = 512


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
    shared: int = 0  # the first embeds that depend on the voice and language alone, not on the text


def _pick(logits: torch.Tensor, do_sample: bool, top_k: int, top_p: float, temperature: float, rng) -> int:
    """Draw one id from [V] float logits the way Hugging Face's warpers do (or take the argmax)."""
    return _pick_rows(logits.unsqueeze(0), do_sample, top_k, top_p, temperature, [rng])[0]


def _pick_rows(
    logits: torch.Tensor, do_sample: bool, top_k: int, top_p: float, temperature: float, rngs: list
) -> list[int]:
    """One id per row of [R, V] float logits, row r drawn with rngs[r] (None: torch's global generator),
    or each row's argmax.

    The distribution of Hugging Face's warpers (temperature, top-k, top-p, then a draw), computed on the
    top k candidates only: the top-k mask leaves nothing else to draw. Each torch call here costs tens
    of microseconds (a predictor step has just swept the caches), 16 draws a frame and row, so the draw
    itself is plain Python over the k probabilities (docs/speed.md, "Drawing the codes"). Where the k-th
    logit ties with the next, only one of them is a candidate (the mask keeps both), which random float
    logits practically never meet.
    """
    if not do_sample:
        return logits.argmax(dim=-1).tolist()
    k = top_k if 0 < top_k < logits.shape[-1] else logits.shape[-1]
    values, ids = torch.topk(logits, k, dim=-1)  # each row's candidates, most likely first
    probs = (values / temperature).softmax(dim=-1).tolist()
    picked = []
    for row_probs, row_ids, uniform in zip(probs, ids.tolist(), _uniforms(rngs), strict=True):
        if top_p < 1.0:
            # Hugging Face drops the least likely candidates whose probabilities sum to at most
            # 1 - top_p, never the most likely one; the draw renormalises what is left.
            tail = 0.0
            for index in range(k - 1, 0, -1):
                tail += row_probs[index]
                if tail > 1 - top_p:
                    break
                row_probs[index] = 0.0
        cumulative = list(itertools.accumulate(row_probs))
        index = bisect.bisect_right(cumulative, uniform * cumulative[-1])
        picked.append(row_ids[min(index, k - 1)])
    return picked


def _uniforms(rngs: list) -> list[float]:
    """One uniform number in [0, 1) per row, from the row's generator (None: torch's global one)."""
    if all(rng is None for rng in rngs):
        return torch.rand(len(rngs), dtype=torch.float64).tolist()
    return [float(torch.rand((), dtype=torch.float64, generator=rng)) for rng in rngs]


@dataclass(eq=False)  # rows are told apart by identity
class FrameRow:
    """One utterance being generated: its caches, the codes drawn so far and where it stands.

    Rows advance frame by frame, alone or together with other rows (continuous batching): a row's
    codes depend only on its own prompt, options and random stream, never on the rows beside it.
    """

    prompt: TalkerPrompt
    max_frames: int
    rng: torch.Generator | None
    cache: Any  # the talker's cache (the backend's type)
    position: int  # the talker position of the next input
    logits: torch.Tensor | None  # codebook-0 logits of the next frame, once its talker step ran
    hidden: torch.Tensor  # [1, 1, H] the talker's hidden state that starts the next frame's predictor
    history: list[int] = field(default_factory=list)  # codebook-0 codes so far
    next_input: torch.Tensor | None = None  # [1, 1, H] the talker's next input, until its step runs
    forced: torch.Tensor | None = None  # [frames, 16] teacher-forced codes
    record: list[torch.Tensor] | None = None  # collects every logits tensor, in order
    done: bool = False

    @property
    def frames(self) -> int:
        return len(self.history)


class FrameGenerator:
    """Turns TalkerPrompts into frames of 16 codes, one talker step + 15 predictor steps per frame.

    The backend's steps compute; drawing codes, the repetition penalty, the
    suppressed control tokens and EOS happen here, once for every backend.
    `start` runs a prompt (its own step); `advance` takes any number of rows one
    frame further with one batched talker step and 15 batched predictor steps.
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

    @torch.inference_mode()
    def start(
        self,
        prompt: TalkerPrompt,
        max_frames: int,
        seed: int | None = None,
        forced: torch.Tensor | None = None,
        record: list[torch.Tensor] | None = None,
    ) -> FrameRow:
        """A new row: its cache, and the prompt run through the talker (a step of its own).

        forced [frames, 16] makes every code the given one (teacher forcing, to compare the
        logits of two precisions on the same path); record then collects all logits, in order.
        """
        if forced is not None:
            max_frames = min(max_frames, forced.shape[0])
        rng = None if seed is None else torch.Generator().manual_seed(seed)
        (row,) = self.start_rows([prompt], [max_frames], [rng])
        row.forced, row.record = forced, record
        return row

    @torch.inference_mode()
    def start_rows(
        self,
        prompts: list[TalkerPrompt],
        max_frames: list[int],
        rngs: list[torch.Generator | None] | None = None,
    ) -> list[FrameRow]:
        """New rows for several prompts at once: their prompts run through the talker in one step (one
        read of its weights for all of them; in several if they pass JOINED_PROMPT_TOKENS), each into its
        own cache."""
        caches = [
            self.steps.new_talker_cache(prompt.embeds.shape[1] + cap + 1)
            for prompt, cap in zip(prompts, max_frames, strict=True)
        ]
        groups: list[list[int]] = []
        tokens = 0
        for index, prompt in enumerate(prompts):
            length = prompt.embeds.shape[1]
            if not groups or tokens + length > JOINED_PROMPT_TOKENS:
                groups.append([])
                tokens = 0
            groups[-1].append(index)
            tokens += length
        results: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in groups:
            results += self.steps.talker_prompts(
                [prompts[i].embeds for i in group],
                [caches[i] for i in group],
                [prompts[i].shared for i in group],
            )
        return [
            FrameRow(prompt, cap, rng, cache, prompt.embeds.shape[1], logits, hidden)
            for prompt, cap, rng, cache, (logits, hidden) in zip(
                prompts, max_frames, rngs or [None] * len(prompts), caches, results, strict=True
            )
        ]

    @torch.inference_mode()
    def prepare_rows(self, rows: int) -> None:
        """One talker step and a frame's first two predictor steps for `rows` rows of zeros, through the
        steps the batched loop calls: what a backend prepares per batch size (traced_steps.py records its
        steps once per shape, about a second each on the 0.6B talker) is then ready before a request
        needs it. Nothing a real row uses is touched."""
        steps = self.steps
        zeros = torch.zeros_like(self.tables.codec(torch.tensor([0]))).view(1, 1, -1)  # [1, 1, H]
        caches = [steps.new_talker_cache(2) for _ in range(rows)]
        steps.talker_prompts([zeros] * rows, caches)  # position 0 of each cache written
        _, hidden = steps.talker_rows(zeros.expand(rows, 1, -1), [1] * rows, caches)
        cache = steps.new_predictor_rows(rows)
        steps.predictor_rows(
            torch.cat((hidden, zeros.expand(rows, 1, -1).to(hidden.dtype)), dim=1), 0, cache, 0
        )
        steps.predictor_rows(zeros.expand(rows, 1, -1).to(hidden.dtype), 2, cache, 1)

    @torch.inference_mode()
    def advance(self, rows: list[FrameRow]) -> list[torch.Tensor | None]:
        """The next frame of each row, a LongTensor [16], or None where the row has ended (EOS or its cap).

        Rows that ended are marked done and must not be advanced again.
        """
        stepping = [row for row in rows if row.next_input is not None]
        if stepping:
            logits, hidden = self.steps.talker_rows(
                torch.cat([row.next_input for row in stepping]),
                [row.position for row in stepping],
                [row.cache for row in stepping],
            )
            for index, row in enumerate(stepping):
                row.logits, row.hidden = logits[index], hidden[index : index + 1]
                row.next_input = None
                row.position += 1
        codes0: list[int] = []
        live: list[FrameRow] = []
        for row in rows:
            code0 = self._draw_code0(row)
            if code0 is None:
                row.done = True
                row.cache = None  # no talker step follows: its keys and values can go now
            else:
                codes0.append(code0)
                live.append(row)
        rests = self._predict_rest(live, codes0) if live else []
        frames: dict[int, torch.Tensor] = {}
        going_on: list[int] = []  # rows of live that take another talker step
        codes = torch.tensor([[code0, *rest] for code0, rest in zip(codes0, rests, strict=True)])
        for index, row in enumerate(live):
            row.history.append(codes0[index])
            frames[id(row)] = codes[index]
            if row.frames >= row.max_frames:
                row.done = True  # its last frame: no talker step after it
                row.cache = None
            else:
                going_on.append(index)
        if going_on:
            self._set_next_inputs([live[index] for index in going_on], codes[going_on])
        return [frames.get(id(row)) for row in rows]

    def _set_next_inputs(self, rows: list[FrameRow], codes: torch.Tensor) -> None:
        """Each row's next talker input from its frame's codes [R, 16]: the sum of the 16 codes' embeddings
        (in qwen-tts's order, so bit for bit its sum) and the row's next text token or the pad.

        One look-up per codebook for all rows: a torch call costs tens of microseconds here, and per row
        and code it was 31 calls a row a frame."""
        embeds = [self.tables.codec(codes[:, 0])]  # each [1, R, H]
        embeds += [
            self.tables.predictor_codec(group, codes[:, 1 + group]) for group in range(codes.shape[1] - 1)
        ]
        summed = torch.cat(embeds).sum(0)  # [R, H]
        for index, row in enumerate(rows):
            step = row.frames - 1
            trailing = row.prompt.trailing_text
            text = trailing[:, step : step + 1] if step < trailing.shape[1] else row.prompt.pad_embed
            row.next_input = summed[index].view(1, 1, -1) + text

    def _draw_code0(self, row: FrameRow) -> int | None:
        """Codebook 0 of the row's next frame, or None for EOS (or a row already at its cap)."""
        if row.done or row.logits is None or row.frames >= row.max_frames:
            return None
        sampling = row.prompt.sampling
        logits = self._penalized(row.logits, row.history, sampling)
        row.logits = None
        if row.record is not None:
            row.record.append(logits)
        if row.forced is not None:
            code0 = int(row.forced[row.frames, 0])
        else:
            code0 = _pick(
                logits, sampling.do_sample, sampling.top_k, sampling.top_p, sampling.temperature, row.rng
            )
        return None if code0 == self.eos else code0

    def _predict_rest(self, rows: list[FrameRow], codes0: list[int]) -> list[list[int]]:
        """Codebooks 1..15 of each row's frame from its talker hidden state and codebook 0, the rows
        stepping together (they all stand at the same predictor position)."""
        steps = self.steps
        hidden = torch.cat([row.hidden for row in rows])
        first = self.tables.codec(torch.tensor(codes0)).reshape(len(rows), 1, -1).to(hidden.dtype)
        x = torch.cat((hidden, first), dim=1)
        cache = steps.new_predictor_rows(len(rows))
        start = 0
        codes: list[list[int]] = [[] for _ in rows]
        for group in range(self.num_groups - 1):
            logits = steps.predictor_rows(x, start, cache, group)
            start += x.shape[1]
            drawn = self._draw_rest(rows, logits, group)
            for index, code in enumerate(drawn):
                codes[index].append(code)
            if group < self.num_groups - 2:
                x = self.tables.predictor_codec(group, torch.tensor(drawn)).reshape(len(rows), 1, -1)
                x = x.to(hidden.dtype)
        return codes

    @staticmethod
    def _draw_rest(rows: list[FrameRow], logits: torch.Tensor, group: int) -> list[int]:
        """Each row's code of codebook 1 + group from the predictor's logits [R, V]: rows drawing with the
        same options draw together (_pick_rows); forced rows take their code, recording rows keep logits."""
        drawn = [0] * len(rows)
        together: dict[tuple, list[int]] = {}
        for index, row in enumerate(rows):
            if row.record is not None:
                row.record.append(logits[index])
            if row.forced is not None:
                drawn[index] = int(row.forced[row.frames, 1 + group])
                continue
            sampling = row.prompt.sampling
            options = (
                sampling.subtalker_do_sample,
                sampling.subtalker_top_k,
                sampling.subtalker_top_p,
                sampling.subtalker_temperature,
            )
            together.setdefault(options, []).append(index)
        for options, indices in together.items():
            rows_logits = logits if len(indices) == len(rows) else logits[indices]
            picked = _pick_rows(rows_logits, *options, [rows[index].rng for index in indices])
            for index, code in zip(indices, picked, strict=True):
                drawn[index] = code
        return drawn

    def frames(
        self,
        prompt: TalkerPrompt,
        max_frames: int,
        seed: int | None = None,
        forced: torch.Tensor | None = None,
        record: list[torch.Tensor] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield one LongTensor [16] per frame until EOS or max_frames: one row on its own."""
        row = self.start(prompt, max_frames, seed, forced, record)
        while not row.done:
            (frame,) = self.advance([row])
            if frame is None:
                return
            yield frame

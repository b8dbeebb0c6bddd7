"""The seams of the engine: what the front ends call, and every type a backend implements or receives.

Front ends (through the service) know only `Engine`: its voices and the PCM chunks of one piece of
text. Below it, a backend (PyTorch, IPEX, OpenVINO) implements `ModelSteps` (one talker step, one
code-predictor step), `EmbeddingTables` (the talker's input look-ups), a `CodecStep` (codes -> PCM) and,
for Base models, a `ReferenceEncoder` (reference audio -> `CloneReference`): everything around them
(prompts, sampling, EOS rules, frame caps, the chunk schedule, voices) lives once, in
engine/pipeline.py, engine/loop.py, engine/prompt.py and engine/codec.py. Tensors crossing these seams
are torch tensors on the CPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..requests import EngineError
from ..voices.voice import Voice

SAMPLE_RATE = 24000  # every 12 Hz Qwen3-TTS codec decodes to 24 kHz
SAMPLE_WIDTH = 2  # 16-bit PCM
CHANNELS = 1
# Largest number of frames run through the codec in one pass: longer inputs (a reference prompt) are
# decoded in pieces, which bounds the memory of the wide upsampling layers (about 0.7 MB a frame each).
MAX_FRAMES_PER_PASS = 32


class Engine(ABC):
    """A loaded Qwen3-TTS model that turns text into 16-bit mono PCM at 24 kHz."""

    sample_rate = SAMPLE_RATE
    sample_width = SAMPLE_WIDTH
    channels = CHANNELS

    @property
    @abstractmethod
    def model_kind(self) -> str:
        """The checkpoint kind: "custom_voice", "base" or "voice_design"."""

    @abstractmethod
    def languages(self) -> Sequence[str]:
        """Model language names this model speaks (without "auto")."""

    @abstractmethod
    def voices(self) -> Sequence[Voice]:
        """The voices a client may ask for, default first."""

    def reload_voices(self) -> bool:
        """Pick up changes to the voices directory; True if the voices were rebuilt.

        Blocking, and it may run the model (a new clone prompt): callers run it
        where synthesis runs, on the inference thread. An engine without a voices
        directory has nothing to reload.
        """
        return False

    def follows_instructions(self, voice: Voice) -> bool:
        """True if a request's style instruction changes how this voice speaks."""
        return False

    def clone_voice(self, audio: bytes, transcript: str | None) -> Voice:
        """A voice cloned from reference audio (any format librosa reads) for one request.

        transcript None clones from the speaker embedding alone. Blocking (it runs
        the encoders): callers run it on the inference thread.
        """
        raise EngineError(
            f"a {self.model_kind} model cannot clone voices; serve a Base model", "cannot-clone"
        )

    @abstractmethod
    def synthesize(self, text: str, voice: Voice, language: str) -> Iterator[bytes]:
        """Yield 16-bit PCM chunks for text as soon as each exists.

        language is a model language name or "auto". Blocking: callers run it
        off the event loop. Raises EngineError for a request it cannot serve.
        """

    def start(self, text: str, voice: Voice, language: str) -> EngineStream:
        """A sentence to be spoken step by step with `advance` (blocking: it runs the prompt).

        Several started sentences advance together (continuous batching); by default an engine that
        cannot batch steps each one's `synthesize` in turn.
        """
        return _IteratorStream(self.synthesize(text, voice, language))

    def start_many(self, sentences: Sequence[tuple[str, Voice, str]]) -> list[EngineStream | Exception]:
        """`start` for several sentences (text, voice, language) that join at the same step: a stream for
        each, or the error that sentence met (the others start regardless). An engine that can runs their
        prompts together; by default one after another."""
        started: list[EngineStream | Exception] = []
        for sentence in sentences:
            try:
                started.append(self.start(*sentence))
            except Exception as err:  # this sentence cannot be spoken; the others go on
                started.append(err)
        return started

    def advance(self, streams: Sequence[EngineStream]) -> list[bytes]:
        """One step of every stream; the PCM (possibly none) each has ready. A stream is finished once
        its `done` is true; advance only streams that are not."""
        steps = []
        for stream in streams:
            assert isinstance(stream, _IteratorStream), "a stream of another engine"
            steps.append(stream.step())
        return steps

    def warmup(self, rows: int = 1, voice: Voice | None = None, language: str = "auto") -> None:
        """Run one short synthesis (in voice, default the first, and language) so the first real request
        is not the slow one. rows: the most sentences that will step together; an engine that prepares
        each batch size (PipelineEngine) does so here."""
        for _ in self.synthesize("Hello.", voice or self.voices()[0], language):
            pass


class EngineStream(ABC):
    """One sentence an engine is speaking, advanced step by step (see Engine.start).

    `urgent` False says nobody listens to it yet (a sentence generated ahead): an engine may then hold
    its audio back and spend the time on the sentences that are being listened to.
    """

    urgent: bool = True

    @property
    def held(self) -> bool:
        """True while it has nothing to compute until it becomes urgent (all generated, audio held)."""
        return False

    @property
    @abstractmethod
    def done(self) -> bool:
        """True once all of the sentence's audio was returned."""


class _IteratorStream(EngineStream):
    """A sentence of an engine that cannot batch: its synthesize() iterator, one chunk a step."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def step(self) -> bytes:
        pcm = next(self._chunks, None)
        if pcm is None:
            self._done = True
            return b""
        return pcm


@dataclass(frozen=True)
class CodeLayout:
    """The code space of a 12 Hz model: what the loop needs to know to draw codes."""

    vocab_size: int  # the talker's codebook-0 vocabulary (codes + control tokens)
    eos: int  # codec_eos_token_id
    num_groups: int  # codebooks per frame (16)
    max_positions: int  # talker positions a cache may hold (the rotary table's length)

    @classmethod
    def from_config(cls, talker_config: dict[str, Any], max_positions: int) -> CodeLayout:
        """Read from config.json's talker_config (a dict or a transformers config's to_dict())."""
        return cls(
            vocab_size=int(talker_config["vocab_size"]),
            eos=int(talker_config["codec_eos_token_id"]),
            num_groups=int(talker_config["num_code_groups"]),
            max_positions=max_positions,
        )


class ModelSteps(ABC):
    """One loaded talker and code predictor, run one step at a time.

    A cache holds one utterance's past (keys and values, or an OpenVINO infer
    request with its state): each utterance owns its own, so utterances can
    interleave step by step. Steps must not change anything but the cache.
    """

    layout: CodeLayout

    @abstractmethod
    def new_talker_cache(self, max_len: int) -> Any:
        """A talker cache for up to max_len positions."""

    @abstractmethod
    def talker(self, embeds: torch.Tensor, start: int, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Run embeds [1, n, H] at positions start.. (n > 1 only at start 0).

        Returns the codebook-0 logits of the last position as float32 [vocab] (the
        caller may change them in place) and its hidden state [1, 1, H], which the
        code predictor starts from.
        """

    @abstractmethod
    def new_predictor_cache(self) -> Any:
        """A code-predictor cache for one frame (num_groups + 1 positions)."""

    @abstractmethod
    def predictor(self, embeds: torch.Tensor, start: int, cache: Any, group: int) -> torch.Tensor:
        """Run talker-space embeds [1, n, H] at positions start.. and return head group's float32 logits.

        The first call of a frame (start 0) takes the talker's hidden state and the
        embedding of codebook 0; each later call the embedding of the code just drawn.
        group 0 predicts codebook 1. A backend projects from talker to predictor width
        itself (small_to_mtp_projection).
        """

    # Several utterances at once (continuous batching). A step reads every weight for however many rows
    # it computes, so a backend that can batch overrides these; by default the rows run one by one.

    def talker_rows(
        self, embeds: torch.Tensor, starts: list[int], caches: list[Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for each of B utterances: embeds [B, 1, H], each at its own position with its own
        cache. Returns logits [B, vocab] (float32) and hidden states [B, 1, H]."""
        return talker_row_by_row(self.talker, embeds, starts, caches)

    def talker_prompts(
        self, prompts: list[torch.Tensor], caches: list[Any], shared: list[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`talker` at start 0 for the prompts [1, n_i, H] of several new utterances, each into its own
        cache: what `talker` returns for each. By default one after another. shared[i]: how many of
        prompt i's first positions depend on its voice alone (TalkerPrompt.shared), which a backend may
        take from an earlier prompt that began alike instead of computing them again."""
        return prompts_one_by_one(self.talker, prompts, caches)

    def new_predictor_rows(self, rows: int) -> Any:
        """A code-predictor cache for one frame of `rows` utterances that step together."""
        return [self.new_predictor_cache() for _ in range(rows)]

    def predictor_rows(self, embeds: torch.Tensor, start: int, cache: Any, group: int) -> torch.Tensor:
        """`predictor` for B utterances at the same position: embeds [B, n, H] -> logits [B, vocab]."""
        return predictor_row_by_row(self.predictor, embeds, start, cache, group)


def talker_row_by_row(
    talker: Any, embeds: torch.Tensor, starts: list[int], caches: list[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """talker_rows for a talker that steps one row a call: each row in turn, the results stacked."""
    results = [
        talker(embeds[row : row + 1], start, cache)
        for row, (start, cache) in enumerate(zip(starts, caches, strict=True))
    ]
    return torch.stack([logits for logits, _ in results]), torch.cat([hidden for _, hidden in results])


def prompts_one_by_one(
    talker: Any, prompts: list[torch.Tensor], caches: list[Any]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """talker_prompts for a talker that runs one prompt a call."""
    return [talker(embeds, 0, cache) for embeds, cache in zip(prompts, caches, strict=True)]


def predictor_row_by_row(
    predictor: Any, embeds: torch.Tensor, start: int, caches: list[Any], group: int
) -> torch.Tensor:
    """predictor_rows for a predictor that steps one row a call (one cache per row): the logits stacked."""
    return torch.stack(
        [predictor(embeds[row : row + 1], start, caches[row], group) for row in range(len(caches))]
    )


class EmbeddingTables(ABC):
    """The talker's input look-ups; every one takes ids [n] and returns rows [1, n, H]."""

    @abstractmethod
    def text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text tokens through the text embedding and the talker's text projection."""

    @abstractmethod
    def codec(self, ids: torch.Tensor) -> torch.Tensor:
        """Codebook-0 codes and codec control ids (the talker's input embedding)."""

    @abstractmethod
    def predictor_codec(self, group: int, ids: torch.Tensor) -> torch.Tensor:
        """Codes of codebook group + 1 (the code predictor's input embedding number group)."""


@dataclass(frozen=True)
class DecoderState:
    """What a codec step needs of the past; its tensors are never changed in place, so states can be shared.

    All shapes are fixed (see codec.CodecGraph.state_shapes): the key/value caches always hold
    sliding_window - 1 entries, those before frame 0 being zeros that the attention mask leaves out. The
    OpenVINO step keeps the same CPU torch tensors and hands them to the runtime as numpy views, without
    copying.
    """

    frames: int  # frames decoded so far: the RoPE position of the next frame
    convs: tuple[torch.Tensor, ...]  # per stateful (transposed) conv: its last input samples [1, C, context]
    keys: tuple[torch.Tensor, ...]  # per transformer layer: the last keys after RoPE [1, heads, window-1, D]
    values: tuple[torch.Tensor, ...]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The state tensors in graph order: convs, keys, values."""
        return (*self.convs, *self.keys, *self.values)


class CodecStep(ABC):
    """How a backend decodes one chunk: pure, so one step serves any number of streams at once."""

    num_quantizers: int
    samples_per_frame: int
    max_frames_per_pass: int = MAX_FRAMES_PER_PASS  # longer inputs are decoded in passes of this many

    @abstractmethod
    def initial_state(self) -> DecoderState:
        """The state of a stream that has decoded nothing."""

    @abstractmethod
    def decode(self, codes: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """codes [1, num_quantizers, T] int64 (T <= max_frames_per_pass) after `state` -> the T *
        samples_per_frame float32 samples at 24 kHz and the state after them; `state` is left unchanged."""

    def decode_rows(
        self, codes: torch.Tensor, states: list[DecoderState]
    ) -> tuple[torch.Tensor, list[DecoderState]]:
        """`decode` for B streams at once: codes [B, num_quantizers, T] -> samples [B, T * samples_per_frame]
        and each stream's new state. A backend that batches the codec overrides it; by default row by row."""
        results = [self.decode(codes[row : row + 1], state) for row, state in enumerate(states)]
        return torch.stack([wav for wav, _ in results]), [state for _, state in results]


@dataclass(frozen=True, eq=False)
class CloneReference:
    """A cloned voice: its x-vector, and for in-context cloning the reference codes and their transcript."""

    ref_code: torch.Tensor | None  # [T, 16]; None clones from the speaker embedding alone
    speaker_embedding: torch.Tensor  # [H]
    ref_text: str | None = None

    @classmethod
    def from_prompt_item(cls, item: Any) -> CloneReference:
        """From qwen-tts's VoiceClonePromptItem (as create_voice_clone_prompt returns it)."""
        return cls(ref_code=item.ref_code, speaker_embedding=item.ref_spk_embedding, ref_text=item.ref_text)


class ReferenceEncoder(ABC):
    """What turns reference audio into a cloned voice (a Base model's speaker and codec encoders)."""

    @abstractmethod
    def clone_reference(self, waveform: np.ndarray, rate: int, transcript: str | None) -> CloneReference:
        """The x-vector, and with a transcript the reference codes (in-context cloning)."""

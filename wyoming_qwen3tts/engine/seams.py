"""The seams of the engine: what the front ends call, and what every backend implements or receives.

Front ends (through the service) know only `Engine`: its voices and the PCM chunks of one piece of
text. Below it, a backend (PyTorch, IPEX, OpenVINO) supplies only `ModelSteps` (one talker step, one
code-predictor step) and the tables and codec step of its own: everything around the steps (prompts,
sampling, EOS rules, frame caps, the chunk schedule, voices) lives once, in engine/pipeline.py and
engine/loop.py. Tensors crossing these seams are torch tensors on the CPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..requests import EngineError
from ..voices.voice import Voice

SAMPLE_RATE = 24000  # every 12 Hz Qwen3-TTS codec decodes to 24 kHz
SAMPLE_WIDTH = 2  # 16-bit PCM
CHANNELS = 1


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

    def warmup(self) -> None:
        """Run one short synthesis so the first real request is not the slow one."""
        voice = self.voices()[0]
        for _ in self.synthesize("Hello.", voice, "auto"):
            pass


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

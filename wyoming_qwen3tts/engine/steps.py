"""The step interface a backend implements: how one talker step and one code-predictor step run.

Everything around the steps (prompts, sampling, repetition penalty, EOS rules,
frame caps, the chunk schedule, voices) lives once, in engine/loop.py and the
engines; a backend (PyTorch, OpenVINO) supplies only these two calls and the
embedding tables (engine/prompt.py). Tensors crossing this seam are torch
tensors on the CPU, so the shared loop never needs to know a backend's types.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


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

"""The step interface from two halves: a talker and a code predictor, possibly of two backends.

No backend runs every part fastest on every CPU: on CPUs with AVX512-VNNI or AMX, OpenVINO's int4
code predictor was measured a quarter faster than PyTorch's int8 one, while PyTorch's talker is as fast
as OpenVINO's and its codec (bfloat16) twice as fast (docs/speed.md). Both halves take and return the
same torch tensors at the seam (engine/seams.py), so the loop cannot tell them apart.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .seams import CodeLayout, ModelSteps


class TalkerSteps(Protocol):
    """The talker half of ModelSteps (what TorchSteps and OpenVINOTalker both have)."""

    layout: CodeLayout

    def new_talker_cache(self, max_len: int) -> Any: ...

    def talker(self, embeds: torch.Tensor, start: int, cache: Any) -> tuple[torch.Tensor, torch.Tensor]: ...

    def talker_rows(
        self, embeds: torch.Tensor, starts: list[int], caches: list[Any]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def talker_prompts(
        self, prompts: list[torch.Tensor], caches: list[Any], shared: list[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]: ...


class CodePredictor(Protocol):
    """The predictor half of ModelSteps (what OpenVINOPredictor and TorchSteps both have)."""

    def new_predictor_cache(self) -> Any: ...

    def predictor(self, embeds: torch.Tensor, start: int, cache: Any, group: int) -> torch.Tensor: ...

    def new_predictor_rows(self, rows: int) -> Any: ...

    def predictor_rows(self, embeds: torch.Tensor, start: int, cache: Any, group: int) -> torch.Tensor: ...


class SplitSteps(ModelSteps):
    """Talker steps of `talker`, code-predictor steps of `predictor`."""

    def __init__(self, talker: TalkerSteps, predictor: CodePredictor) -> None:
        self.layout = talker.layout
        self.talker_steps = talker
        self.code_predictor = predictor

    def new_talker_cache(self, max_len: int) -> Any:
        return self.talker_steps.new_talker_cache(max_len)

    def talker(self, embeds: torch.Tensor, start: int, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.talker_steps.talker(embeds, start, cache)

    def talker_rows(
        self, embeds: torch.Tensor, starts: list[int], caches: list[Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.talker_steps.talker_rows(embeds, starts, caches)

    def talker_prompts(
        self, prompts: list[torch.Tensor], caches: list[Any], shared: list[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.talker_steps.talker_prompts(prompts, caches, shared)

    def new_predictor_cache(self) -> Any:
        return self.code_predictor.new_predictor_cache()

    def predictor(self, embeds: torch.Tensor, start: int, cache: Any, group: int) -> torch.Tensor:
        return self.code_predictor.predictor(embeds, start, cache, group)

    def new_predictor_rows(self, rows: int) -> Any:
        return self.code_predictor.new_predictor_rows(rows)

    def predictor_rows(self, embeds: torch.Tensor, start: int, cache: Any, group: int) -> torch.Tensor:
        return self.code_predictor.predictor_rows(embeds, start, cache, group)

"""The one-token steps recorded as TorchScript graphs: their small ops dispatched from C++, not Python.

A one-token step runs ~70 small operations a layer around its four matrix products (norms, RoPE,
cache writes, attention, the int8 kernels' own scaling), and a frame runs 28 talker layers and
15 x 5 predictor layers: with Python dispatching each of them, that overhead cost as much as a third
of the code predictor's time. `torch.jit.trace` records a step once and replays it from C++. It needs
no compiler (unlike torch.compile, compiled_steps.py), takes a fraction of a second, and computes
exactly what the eager step computes (same kernels, same order: tests/test_traced_steps.py). Each
recording is then frozen: the weights and sizes it would look up on every replay become constants (a
third of the nodes; steps 4-6 % faster, and less memory kept).

The heads after the steps (`TracedHead`) are recorded the same way, for one row, at load.

Recordings run with TorchScript's executor optimisations off: they add nothing measurable here, and
with IPEX loaded its graph passes broke the in-place cache writes from the third call on.

A recording keeps memory for the life of the process, even once dropped (pytorch/pytorch#35600): among
it, for every recorded operation, the text of the Python stack the operation came from. So each
recording is made on a thread of its own, whose stack is a few frames deep, not the thirty of a
server's worker, and a traced int8 linear records few operations (quantize.py); docs/speed.md, "Memory",
has the figures. The steps run their linears by forward() (steps.py): a recording is one flat graph.

A recording holds shapes, so there is one per shape: the number of rows and of caches stepping
together (`DecoderStack.on_views` takes the caches as views ending at the new token, so positions
never enter a recording). Each is made the first time its shape steps. Should torch refuse to trace
(torch.jit is deprecated and may one day go), the steps stay eager and the log says so once.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

import torch
from torch import nn

from .quantize import KERNELS
from .steps import DecoderStack, TorchSteps

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


class _StepModule(nn.Module):
    """A DecoderStack's on-views step as a module: its layers' linears are submodules, as the tracer
    needs for the packed int8 weights (script objects) they hold."""

    def __init__(self, stack: DecoderStack) -> None:
        super().__init__()
        self.stack = stack
        self.linears = nn.ModuleList(linear for layer in stack.layers for linear in layer.linears)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, views: list[torch.Tensor]
    ) -> torch.Tensor:
        return self.stack.eager_on_views(x, cos, signed_sin, views)


class TracedViews:
    """Stands in DecoderStack.on_views: the recording for the call's shape, made on its first call."""

    def __init__(self, stack: DecoderStack, max_tokens: int = 1) -> None:
        self._stack = stack
        self._max_tokens = max_tokens  # longer inputs (prompts, of a new length each sentence) run eagerly
        self._module = _StepModule(stack)
        self._recordings: dict[tuple, torch.jit.ScriptModule] = {}
        self.failed: str | None = None  # why tracing was given up, once it was

    def __call__(
        self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, views: list[torch.Tensor]
    ) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, tuple(cos.shape), len(views))
        recording = self._recordings.get(key)
        if recording is None and self.failed is None and x.shape[1] <= self._max_tokens:
            recording = self._record(key, x, cos, signed_sin, views)
        if recording is None:  # a prompt's length, or tracing given up
            return self._stack.eager_on_views(x, cos, signed_sin, views)
        with torch.jit.optimized_execution(False):
            return recording(x, cos, signed_sin, views)

    def _record(
        self,
        key: tuple,
        x: torch.Tensor,
        cos: torch.Tensor,
        signed_sin: torch.Tensor,
        views: list[torch.Tensor],
    ) -> torch.jit.ScriptModule | None:
        """Trace the step on this call's own inputs (it writes the same keys and values the real step
        then writes again)."""
        started = time.monotonic()
        try:
            recording = _recorded(self._module, (x, cos, signed_sin, views))
        except Exception as err:  # a torch without torch.jit, or a layer it cannot trace
            self.failed = _why(err)
            _LOGGER.warning("Steps run untraced (slower): tracing failed with %s", self.failed)
            return None
        self._recordings[key] = recording
        _LOGGER.debug(
            "Traced a %d-layer step for %s in %.2f s",
            len(self._stack.layers),
            key,
            time.monotonic() - started,
        )
        return recording


class _HeadModule(nn.Module):
    """A head's own forward as a module (what the tracer needs for an int8 layer's packed weights), run by
    its class's forward: the instance's forward is the TracedHead standing in it."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.head).forward(self.head, x)


class TracedHead:
    """Stands in a head's forward (the talker's codec head, a predictor head): its recording for one row,
    made on the first such call; more rows run eagerly.

    Each head runs once a frame, just after a step has swept the caches, and its few small operations
    around the int8 product cost as much as the product when Python dispatches them (a frame's 16 heads
    3.5 against 2.6 ms recorded, AMX Xeon). One row only: the row counts of batches would each need a
    recording of every head, kept for the life of the process (see the module docstring).
    """

    def __init__(self, head: nn.Module) -> None:
        self._module = _HeadModule(head)
        self._recordings: dict[tuple, torch.jit.ScriptModule] = {}
        self.failed: str | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        recording = self._recordings.get(key)
        if recording is None:
            if self.failed is not None or x.numel() != x.shape[-1]:  # several rows, or tracing given up
                return self._module(x)
            recording = self._record(key, x)
            if recording is None:
                return self._module(x)
        with torch.jit.optimized_execution(False):
            return recording(x)

    def _record(self, key: tuple, x: torch.Tensor) -> torch.jit.ScriptModule | None:
        try:
            recording = _recorded(self._module, (x,))
        except Exception as err:
            self.failed = _why(err)
            _LOGGER.warning("A head runs untraced (slower): tracing failed with %s", self.failed)
            return None
        self._recordings[key] = recording
        return recording


def _recorded(module: nn.Module, inputs: tuple) -> torch.jit.ScriptModule:
    """module traced on inputs and frozen, on a thread of its own; raises what tracing raised."""

    def trace() -> torch.jit.ScriptModule:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the deprecation of torch.jit; tracer notes on constants
            # Not storing the example inputs: a step's hold the first sentence's caches.
            recording = torch.jit.trace(module, inputs, check_trace=False, _store_inputs=False)
            # Frozen, the weights and sizes the recording looks up on every replay become constants:
            # a third of a step's nodes, the same operations on the same tensors.
            return torch.jit.freeze(recording.eval(), optimize_numerics=False)

    return _on_a_thread_of_its_own(trace)


def _why(err: Exception) -> str:
    """What tracing raised, in a line for the log."""
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"


def _on_a_thread_of_its_own(record: Callable[[], T]) -> T:
    """record() on a new thread, which the caller waits for: the tracer's notes of the stack then hold
    a few frames, not the caller's whole stack. (torch gives a new thread its set thread count.)"""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen3tts-trace") as thread:
        return thread.submit(record).result()


def trace_steps(steps: TorchSteps) -> str:
    """Put traced one-token steps into both stacks (the talker's alone when another backend runs the
    predictor), and traced one-row heads after them; return what happened, for the load log line."""
    steps.talker_stack.on_views = TracedViews(steps.talker_stack)
    heads = [steps.codec_head]
    if hasattr(steps, "predictor_stack"):
        # A frame's first predictor step takes two tokens: the talker's hidden state and codebook 0.
        steps.predictor_stack.on_views = TracedViews(steps.predictor_stack, max_tokens=2)
        heads += steps.predictor_heads
    for head in heads:
        if not isinstance(head, (nn.Linear, *KERNELS.values())):  # IPEX's layers: left as they are
            continue
        traced = head.forward = TracedHead(head)
        # Recorded now, not in a first sentence's frames (the warm-up steps through two predictor groups).
        rows = [torch.zeros(1, cast(int, head.in_features), dtype=cast(torch.dtype, steps.dtype))]
        if head is steps.codec_head:
            rows.append(rows[0][0])  # the talker's head also takes its prompt's last position alone
        for row in rows:
            traced(row)
    return "steps traced"

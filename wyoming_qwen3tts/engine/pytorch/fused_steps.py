"""One-token steps as one call of our own operator: every layer of a stack in C++ around its int8 products.

A traced step (traced_steps.py) still dispatches ~50 small operations a layer (norms, RoPE, cache writes,
attention, SiLU) and four int8 products through TorchScript, each with microseconds of fixed cost (the
dispatch, a new output tensor, the products' buffers), 103 layer steps a frame. `qwen3tts::int8_step`
(int8_kernel.cpp) runs a whole step of a stack for one or more rows, each at its own position in its own
cache: the same computation in plain loops between the same int8 products, in float32, with the
products' buffers kept. On the real 0.6B dimensions (AMX Xeon, 2 threads) a code predictor step took
1.89 ms against 2.99 traced, a talker step 19.2 against 23.2; a frame 0.74x (docs/speed.md).

It applies where a stack's weights are our packed int8 layers (the default on CPUs with AVX2) and its
compute float32; elsewhere, and for the code predictor's first step of a frame (two tokens), the traced
or eager steps run as before.

Its float sums round differently from PyTorch's kernels (the norms, the attention's softmax), so its audio
is not bit for bit the traced step's; tests/test_fused_steps.py bounds the difference. Each row's result
is the same alone or among others, and on every instruction-set path, as with the traced steps.
"""

from __future__ import annotations

import logging
from typing import cast

import torch
import torch.nn.functional as F

from .quantize import PackedInt8Linear
from .steps import DecoderStack, KVCache, TorchSteps

_LOGGER = logging.getLogger(__name__)

PACKED = ("packed", "scale", "correction")  # a PackedInt8Linear's tensors, in the op's order


class FusedStep:
    """A DecoderStack's one-token step as one call of qwen3tts::int8_step (its weights listed once)."""

    def __init__(self, stack: DecoderStack) -> None:
        first = stack.layers[0]
        self._params: list[torch.Tensor] = []
        floors: list[float] = []
        for layer in stack.layers:
            self._params += [
                layer.input_norm.weight.contiguous(),
                layer.post_norm.weight.contiguous(),
                layer.qk_norm.weight.reshape(-1).contiguous(),
            ]
            for linear in layer.linears:
                self._params += [cast(torch.Tensor, getattr(linear, name)) for name in PACKED]
            floors += [float(norm.floor) for norm in (layer.input_norm, layer.post_norm, layer.qk_norm)]
        self._params.append(stack.norm.weight.contiguous())
        self._floors = [*floors, float(stack.norm.floor)]
        self._dims = [first.q_heads, first.kv_heads, stack.head_dim, first.intermediate]
        self._cos = stack.cos.float().contiguous()
        self._signed_sin = stack.signed_sin.float().contiguous()
        self._scaling = float(stack.scaling)

    def one_cache(self, x: torch.Tensor, start: int, cache: KVCache) -> torch.Tensor:
        """x [B, 1, H]: B rows of one cache, all at position start."""
        rows = x.shape[0]
        return self._step(x, cache.keys, cache.values, [0] * rows, list(range(rows)), [start] * rows)

    def caches(self, x: torch.Tensor, starts: list[int], caches: list[KVCache]) -> torch.Tensor:
        """x [B, 1, H]: row i at position starts[i] of caches[i] (one row each)."""
        layers = len(caches[0].keys)
        keys = [cache.keys[index] for index in range(layers) for cache in caches]
        values = [cache.values[index] for index in range(layers) for cache in caches]
        rows = len(caches)
        return self._step(x, keys, values, list(range(rows)), [0] * rows, starts)

    def _step(
        self,
        x: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        cache_of_row: list[int],
        row_in_cache: list[int],
        positions: list[int],
    ) -> torch.Tensor:
        rows, _, width = x.shape
        out = torch.ops.qwen3tts.int8_step(
            x.reshape(rows, width).float().contiguous(),
            self._params,
            self._floors,
            self._dims,
            self._cos,
            self._signed_sin,
            keys,
            values,
            cache_of_row,
            row_in_cache,
            positions,
            self._scaling,
        )
        return out.view(rows, 1, width)


def fusable(stack: DecoderStack) -> str | None:
    """Why the stack's steps cannot run as one call, or None if they can."""
    if stack.dtype != torch.float32:
        return f"compute in {str(stack.dtype).removeprefix('torch.')}, not float32"
    for layer in stack.layers:
        if not all(isinstance(linear, PackedInt8Linear) and linear.bias is None for linear in layer.linears):
            return "weights not in our packed int8 layers without bias"
        probe = torch.linspace(-12, 12, 97)
        if not torch.allclose(layer.act.forward(probe), F.silu(probe)):
            return "an activation other than SiLU"
        if layer.qk_norm.weight.shape[0] != layer.q_heads + layer.kv_heads:
            return "q/k norms of an unexpected shape"
    return None


def fuse_steps(steps: TorchSteps) -> str | None:
    """Run both stacks' one-token steps (the talker's alone when another backend runs the predictor) as
    one call each, where both can; what was done for the load log line, or None."""
    stacks = [steps.talker_stack]
    if hasattr(steps, "predictor_stack"):
        stacks.append(steps.predictor_stack)
    for stack in stacks:
        if (reason := fusable(stack)) is not None:
            _LOGGER.debug("One-token steps not fused: %s", reason)
            return None
    for stack in stacks:
        stack.fused = FusedStep(stack)
    return "one-token steps fused"

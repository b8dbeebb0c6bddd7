"""The codec's layers as eager PyTorch runs them faster on the CPU: same values up to rounding.

`CodecGraph(decoder, cpu_kernels=True)` (what `TorchCodec` uses in float32) runs these instead of the
decoder's modules, `pointwise_products=True` only the 1x1 convs as `GemmConv` and the activations as
`Snake` (`TorchCodec` in bfloat16); the graph exported to OpenVINO keeps the plain modules. Measured on
2 cores of an AVX2 EPYC at the real 0.6B dimensions (docs/speed.md, "Codec on AVX2"):

- `GemmConv`: a causal conv as one matrix product on its already padded input, where that beats
  oneDNN's conv: 1x1 convs, the 96 -> 1 output conv (one small product per tap), and the convs whose
  im2col matrix is small, i.e. the wide ones at a chunk's few time steps (the 44 MB 1024 -> 1536 first
  conv, the pre-conv, the 768-channel units of short chunks). oneDNN reorders its input, weights and output
  on every call; MKL multiplies the weights in place. The long, narrow convs stay with oneDNN, which runs
  them near the matrix peak.
- `Snake`: SnakeBeta in one pass of our own operator (snake_kernel.cpp, built by engine/native.py), with
  exp(alpha) and 1 / (exp(beta) + eps) taken once at load, written into the conv input's padded buffer,
  so the carried left context needs no concatenation. PyTorch's five passes cost 20 % of the bfloat16
  codec and 9 % of the float32 one (AMX Xeon, 2 threads); the operator computes in float32 and rounds
  once, so in bfloat16 it is also nearer the float32 result. Where it cannot be built, the upstream
  module's operations run (bit-identical to it).
- `polyphase`: a transposed conv of kernel 2s as two matrix products (current and previous input),
  without concatenating the shifted input.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

from ..cpu import cpu_flags
from .native import SNAKE, KernelUnavailable, loaded

_LOGGER = logging.getLogger(__name__)

# A conv whose im2col matrix (kernel * C_in * T floats) stays below this runs as one GEMM; larger ones (the
# narrow, long 96- to 384-channel units of 3 and more frames) are left to oneDNN, which is faster there.
IM2COL_MAX_ELEMENTS = 1 << 20
# Up to this many time steps the product runs as [T, C_in * k] @ W^T: for a weight-bound product of a few
# columns MKL's W @ cols reads the 44 MB first conv at a third of the speed.
LINEAR_MAX_STEPS = 64


# snake_kernel.cpp's paths by the instructions they use (its enum Isa).
SNAKE_ISAS = ("scalar", "avx2", "avx512")


def snake_isa_of(flags: frozenset[str]) -> str:
    """The fused activation's path for CPUs with these /proc/cpuinfo flags."""
    if {"avx512f", "avx512dq", "avx512bw"} <= flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "scalar"


@functools.lru_cache(maxsize=1)
def fused_snake() -> bool:
    """Whether the fused activation runs here (built and loaded once; the log says why not)."""
    result = loaded(SNAKE)
    if isinstance(result, KernelUnavailable):
        _LOGGER.warning("%s; the codec's activations run as PyTorch operations (slower)", result)
        return False
    set_snake_isa(snake_isa_of(cpu_flags()))  # where QWEN3TTS_CPU_FLAGS stands in for another CPU
    return True


def set_snake_isa(name: str) -> str:
    """Run the fused activation on the best path at or below name that the CPU has (tests compare them);
    returns the one in use before."""
    return SNAKE_ISAS[int(torch.ops.qwen3tts.snake_set_isa(SNAKE_ISAS.index(name)))]


class Snake:
    """SnakeBeta with its per-channel factors precomputed: `snake(x, out=None)` on x [B, C, T].

    out (a view of shape x's, e.g. the new part of a padded buffer) receives the result; x is never written.
    fused=False (or no operator here) runs the upstream module's operations.
    """

    def __init__(self, act: Any, fused: bool = True) -> None:
        with torch.no_grad():
            self.alpha = act.alpha.detach().exp()[:, None]
            self.inverse_beta = 1.0 / (act.beta.detach().exp()[:, None] + act.no_div_by_zero)
            # The operator's factors in float32, from the parameters (not from their bfloat16 rounding).
            self.alpha32 = act.alpha.detach().float().exp().contiguous()
            self.inverse_beta32 = (1.0 / (act.beta.detach().float().exp() + act.no_div_by_zero)).contiguous()
        self.fused = fused and fused_snake()

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.fused and x.dtype in (torch.float32, torch.bfloat16) and x.stride(-1) == 1:
            if out is None:
                out = torch.empty_like(x, memory_format=torch.contiguous_format)
            if out.stride(-1) == 1:
                torch.ops.qwen3tts.snake(x, self.alpha32, self.inverse_beta32, out)
                return out
        wave = torch.mul(x, self.alpha) if out is None else torch.mul(x, self.alpha, out=out)
        return wave.sin_().square_().mul_(self.inverse_beta).add_(x)


class GemmConv:
    """A stride-1 Conv1d on its left-padded input x [1, C_in, context + T] -> [1, C_out, T] as MKL GEMMs.

    Kernel 1: W @ x. Few output channels (the last conv): one small product per tap. Otherwise
    W [C_out, C_in * k] @ im2col [C_in * k, T] (for T <= LINEAR_MAX_STEPS the transposed product), the
    im2col rows (channel, tap) matching the weight's own layout, so no weight is copied.
    """

    def __init__(self, conv: nn.Conv1d, together: bool = True) -> None:
        """together: B streams' steps in one product (the weights read once); False gives each stream the
        product it has alone, for bfloat16, where a product of another shape rounds differently and a
        stream's samples would then depend on which others were decoded with it."""
        self.together = together
        weight = conv.weight.detach()
        self.out_channels, self.in_channels, self.kernel = weight.shape
        self.dilation = int(conv.dilation[0])
        self.weight = weight.reshape(self.out_channels, -1)  # a view: [C_out, C_in * k]
        # Few output channels: one [C_out, C_in] product per tap (tiny copies; none for the others).
        self.taps = (
            [weight[:, :, tap].contiguous() for tap in range(self.kernel)] if self.out_channels <= 8 else []
        )
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(self.out_channels)
        self.bias = bias[:, None]

    def fits(self, length: int) -> bool:
        """True if this conv over `length` new steps is better run here than by oneDNN."""
        if self.kernel == 1 or self.out_channels <= 8:
            return True
        return self.kernel * self.in_channels * length <= IM2COL_MAX_ELEMENTS

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The conv of x; with residual [1, C_out, T] (kernel 1 only) the sum, accumulated into residual."""
        if x.shape[0] > 1:
            # The few-output-channel conv is one small product per tap: row by row, as it is alone.
            if self.together and (self.kernel == 1 or self.out_channels > 8):
                return self._rows(x, residual)
            return self._each_row(x, residual)
        span = (self.kernel - 1) * self.dilation
        length = x.shape[-1] - span
        inputs = x[0] if x.stride(-1) == 1 else x[0].contiguous()
        if self.kernel == 1:
            if residual is not None:
                return residual[0].add_(self.bias).addmm_(self.weight, inputs).unsqueeze(0)
            return torch.addmm(self.bias, self.weight, inputs).unsqueeze(0)
        if self.out_channels <= 8:
            out = torch.addmm(self.bias, self.taps[0], inputs[:, :length])
            for tap in range(1, self.kernel):
                start = tap * self.dilation
                out.addmm_(self.taps[tap], inputs[:, start : start + length])
            return out.unsqueeze(0)
        stride = inputs.stride(0)
        if length <= LINEAR_MAX_STEPS:  # few steps: [T, C_in * k] @ W^T reads W as MKL reads it best
            rows = inputs.as_strided((length, self.in_channels, self.kernel), (1, stride, self.dilation))
            out = torch.addmm(self.bias[:, 0], rows.reshape(length, -1), self.weight.t())
            return out.t().contiguous().unsqueeze(0)
        cols = inputs.as_strided((self.in_channels, self.kernel, length), (stride, self.dilation, 1))
        return torch.addmm(self.bias, self.weight, cols.reshape(-1, length)).unsqueeze(0)

    def _each_row(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """x [B, C_in, context + T] of B streams, each stream's conv computed as it is alone."""
        return torch.cat(
            [
                self(x[row : row + 1], None if residual is None else residual[row : row + 1])
                for row in range(x.shape[0])
            ]
        )

    def _rows(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """x [B, C_in, context + T] of B streams: one product over all their steps (the weights read once),
        the conv being a matrix product of the steps."""
        rows = x.shape[0]
        span = (self.kernel - 1) * self.dilation
        length = x.shape[-1] - span
        # [B, C_in, T, k]: each step's taps, laid out (channel, tap) as the weight's rows are.
        taps = x.unfold(2, span + 1, 1)[..., :: self.dilation]
        steps = taps.permute(0, 2, 1, 3).reshape(rows * length, -1)
        out = torch.addmm(self.bias[:, 0], steps, self.weight.t()).view(rows, length, -1).transpose(1, 2)
        return out.add_(residual) if residual is not None else out.contiguous()


def polyphase(x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """codec._run_polyphase without concatenating the shifted input: x [B, C_in, T (+ 1 past)]."""
    rows = x.shape[0]
    if rows > 1:  # B streams: one product over all their steps
        steps = x.transpose(1, 2)  # [B, T, C_in]
        c_in = steps.shape[2]
        if matrix.shape[0] == c_in:
            out = torch.addmm(bias, steps.reshape(-1, c_in), matrix)
        else:
            out = torch.addmm(bias, steps[:, 1:].reshape(-1, c_in), matrix[:c_in])
            out.addmm_(steps[:, :-1].reshape(-1, c_in), matrix[c_in:])
        return channels_first(out.view(rows, out.shape[0] // rows, stride, -1))
    steps = x[0].t()  # [T, C_in]
    c_in = steps.shape[1]
    if matrix.shape[0] == c_in:
        out = torch.addmm(bias, steps, matrix)
    else:  # kernel 2s: each step's own taps, then the previous step's
        out = torch.addmm(bias, steps[1:], matrix[:c_in]).addmm_(steps[:-1], matrix[c_in:])
    return channels_first(out.view(1, out.shape[0], stride, -1))


def channels_first(blocks: torch.Tensor) -> torch.Tensor:
    """A polyphase product's output blocks [B, T, s, C_out] as samples [B, C_out, T * s], in that layout.

    A view would hold the samples time-major (channel stride 1): every op after it that meets a tensor of
    the usual layout (the residual add, the next conv's input and its carried context) would walk one of
    them across the grain, each slower than this one copy (the codec 3-4 % faster in bfloat16 on an AMX
    Xeon, 9-10 % in float32 there and held to AVX2; docs/speed.md).
    """
    rows, length, stride = blocks.shape[:3]
    return blocks.permute(0, 3, 1, 2).reshape(rows, -1, length * stride).contiguous()

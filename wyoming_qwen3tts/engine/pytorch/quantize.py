"""Int8 weights for the talker's and the code predictor's Linear layers.

Generating one frame is a chain of one-token matrix-vector products: memory
bound, so bytes of weight read per step set the pace, and int8 weights read a
quarter of float32's. Three kernels, the first that this machine runs chosen:

- "packed": our own product (int8_kernel.py, compiled here with g++): each
  row quantized with its own scale, integer sums exact, so a row's result is
  bit for bit the same in any batch. It reads the weights as one stream per
  thread with VNNI dot products (AVX2 without): about half FBGEMM's time a
  product on one row, a frame 0.85-0.9x (docs/speed.md, "Our own int8
  product").
- "dynamic": int8 weights per output channel, activations quantized on the fly
  (the FBGEMM kernels behind `torch.ops.quantized.linear_dynamic`). Fastest on
  x86 CPUs with AVX2/VNNI. We use the kernels directly, not the deprecated
  torch.ao.quantization eager-mode API; should a torch release drop these ops,
  `available_kernels()` no longer lists "dynamic" and "weight-only" is used.
  FBGEMM quantizes a whole input with one scale; so that each row of a batch
  (one utterance each) is quantized with its own scale, as it would be alone,
  every row is divided by its largest magnitude and given two extra inputs,
  +1 and -1, which meet two zero columns of the weight: every row then spans
  exactly [-1, 1], the batch-wide scale is each row's own, and the output row
  is multiplied back. A row's result is bit for bit the same in any batch.
- "weight-only": int8 weights dequantized inside `torch._weight_int8pack_mm`
  (an aten op), activations kept in their float dtype.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
from torch import nn

from . import int8_kernel

_LOGGER = logging.getLogger(__name__)

# Input buffers are kept for calls of up to this many rows (the one-token steps of a batch, which repeat
# thousands of times); a prompt's many rows get a buffer of their own that goes with the call, as its
# lengths vary without bound (kept, they cost 0.8 MB a prompt token on the 0.6B talker, per length).
PINNED_ROWS_KEPT = 16


@functools.lru_cache(maxsize=1)
def available_kernels() -> list[str]:
    """The int8 kernels this torch build runs, preferred first (each probed on a small layer)."""
    kernels = []
    probe = nn.Linear(64, 32)
    x = torch.randn(2, 64)
    with torch.inference_mode():
        expected = probe(x)
        for name, make in KERNELS.items():
            try:
                out = make(probe)(x)
            except Exception as err:  # removed or unsupported in this build
                _LOGGER.debug("int8 kernel %s unavailable: %s", name, err)
                continue
            if out.shape == expected.shape and (out - expected).abs().max() < 0.05 * expected.abs().max():
                kernels.append(name)
    return kernels


def _per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (int8 weight, float32 scale per row)."""
    w = weight.detach()
    scale = (w.abs().amax(dim=1).float() / 127.0).clamp(min=1e-8)
    # In blocks of rows, so no float32 copy of a whole matrix ever exists.
    rows = [
        torch.round(w[i : i + 256].float() / scale[i : i + 256, None]).clamp_(-127, 127).to(torch.int8)
        for i in range(0, w.shape[0], 256)
    ]
    return torch.cat(rows), scale


class DynamicInt8Linear(nn.Module):
    """nn.Linear with int8 weights; activations are quantized per call and per row (FBGEMM)."""

    _ends: torch.Tensor  # [[+1, -1]]: the two inputs that pin every row's range (a buffer, see __init__)

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        # Two zero columns for the +1/-1 inputs that pin every row's range (see the module docstring).
        qweight, scale = _per_channel_int8(torch.cat((weight, weight.new_zeros(weight.shape[0], 2)), dim=1))
        with warnings.catch_warnings():
            # Deprecated with the quantized dtypes; available_kernels() falls back when they go.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
            quantized = torch._make_per_channel_quantized_tensor(
                qweight, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0
            )
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        if torch.backends.quantized.engine != "fbgemm":
            torch.backends.quantized.engine = "fbgemm"
        self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        self._pinned: dict[int, torch.Tensor] = {}  # rows -> the input buffer, its last two columns +1, -1
        self.register_buffer("_ends", torch.tensor([[1.0, -1.0]]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32:
            flat = flat.float()
        peak = flat.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)
        if torch.jit.is_tracing():
            # A traced step (traced_steps.py) joins the +1/-1 columns on: a kept buffer would be recorded
            # as a constant shared with the eager calls, and the fewer operations a recording holds, the
            # less memory it keeps (each carries the tracer's notes).
            scaled = torch.cat((flat / peak, self._ends.expand(flat.shape[0], 2)), dim=1)
        else:
            scaled = self._scaled_into_kept_buffer(flat, peak)
        out = torch.ops.quantized.linear_dynamic(scaled, self._packed, True).mul_(peak)
        if self.bias is not None:
            out = out.add_(self.bias)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _scaled_into_kept_buffer(self, flat: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """flat / peak written into this row count's input buffer (its last two columns +1, -1)."""
        rows = flat.shape[0]
        pinned = self._pinned.get(rows)
        if pinned is None:
            pinned = torch.empty(rows, self.in_features + 2)
            pinned[:, self.in_features :] = self._ends
            if rows <= PINNED_ROWS_KEPT:
                self._pinned[rows] = pinned
        torch.div(flat, peak, out=pinned[:, : self.in_features])
        return pinned


class PackedInt8Linear(nn.Module):
    """nn.Linear with int8 weights packed for our own op (int8_kernel.cpp); activations quantized per row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        int8_kernel.load()  # KernelUnavailable where it cannot be built: available_kernels() skips it
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        qweight, scale = _per_channel_int8(linear.weight)
        packed, correction = int8_kernel.pack(qweight)
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("correction", correction)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.qwen3tts.int8_linear(
            x.reshape(-1, self.in_features),
            self.packed,
            self.scale,
            self.correction,
            self.bias,
            self.out_features,
        )
        out = out.view(*x.shape[:-1], self.out_features)
        return out if out.dtype == x.dtype else out.to(x.dtype)


class WeightOnlyInt8Linear(nn.Module):
    """nn.Linear with int8 weights dequantized inside the matmul kernel."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        qweight, scale = _per_channel_int8(linear.weight)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scale.to(flat.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.view(*x.shape[:-1], self.out_features)


KERNELS = {"packed": PackedInt8Linear, "dynamic": DynamicInt8Linear, "weight-only": WeightOnlyInt8Linear}
# Kernels whose activations are float32 whatever the model's compute dtype (precision.py).
FLOAT32_KERNELS = ("packed", "dynamic")

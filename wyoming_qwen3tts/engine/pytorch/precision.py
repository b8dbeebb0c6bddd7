"""Which number formats each part of the model runs in, chosen per part for the CPU at hand.

The talker and the code predictor are chains of one-token matrix-vector
products (memory bound): int8 weights win wherever a fast int8 kernel exists.
The codec decoder is convolution-heavy compute: bfloat16 pays only where the
CPU computes it natively, else float32 is faster than emulated bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...cpu import has_native_bf16
from .options import TorchOptions
from .quantize import FLOAT32_KERNELS, available_kernels


@dataclass(frozen=True)
class Precision:
    """Formats for one loaded model: what to load in, what each part computes in."""

    load_dtype: str  # the checkpoint is read in this dtype
    compute_dtype: str  # activations, norms, embeddings, attention
    codec_dtype: str  # the codec decoder
    int8_kernel: str | None  # talker + code predictor Linear weights, or None to keep them float

    def describe(self) -> str:
        weights = f"int8 ({self.int8_kernel})" if self.int8_kernel else self.compute_dtype
        return f"talker/predictor weights {weights}, compute {self.compute_dtype}, codec {self.codec_dtype}"


def choose_precision(
    options: TorchOptions, native_bf16: bool | None = None, kernels: list[str] | None = None
) -> Precision:
    """Resolve --dtype and --quantize (each possibly "auto") against this CPU."""
    native = has_native_bf16() if native_bf16 is None else native_bf16
    kernels = available_kernels() if kernels is None else kernels
    dtype = options.resolved_dtype(native)
    if options.quantize == "none" or (options.quantize == "auto" and not kernels):
        return Precision(load_dtype=dtype, compute_dtype=dtype, codec_dtype=dtype, int8_kernel=None)
    if not kernels:
        raise ValueError("--quantize int8: this torch build has no int8 kernel; use --quantize none")
    kernel = kernels[0]
    if options.int8_kernel != "auto":
        if options.int8_kernel not in kernels:
            raise ValueError(
                f"--int8-kernel {options.int8_kernel} does not run here (available: {', '.join(kernels)}; "
                "the log says why); use --int8-kernel auto"
            )
        kernel = options.int8_kernel
    # These kernels compute in float32; load in bfloat16 to halve the peak memory of loading.
    compute = "float32" if kernel in FLOAT32_KERNELS else dtype
    return Precision(load_dtype="bfloat16", compute_dtype=compute, codec_dtype=dtype, int8_kernel=kernel)

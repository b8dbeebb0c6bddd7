"""The IPEX backend: the PyTorch engine with Intel Extension for PyTorch's kernels in its seams.

IPEX is end-of-life: 2.8.0 is its last release and runs only on torch 2.8.x, so it lives in an
environment of its own (`script/setup --ipex` builds .venv-ipex; options.py's ipex_problem says whether
this one is it). The engine is PyTorchEngine with the same TorchOptions; only the kernels differ
(measurements in docs/backends.md, "The IPEX backend"):

- talker and code predictor projections: `ipex.optimize`'s prepacked linears, float32, or
  bfloat16 where the CPU has what IPEX's bf16 prepack needs (AVX-512 BW/VL/DQ or AVX-NE-CONVERT);
- --quantize int8: IPEX weight-only int8 (`get_weight_only_quant_qconfig_mapping` + prepare/convert,
  its API for modules it does not know). On one-token steps it measured far slower than torch's own
  int8, so "auto" never picks it;
- the codec decoder stays plain torch: `ipex.optimize` on its convs (a Conv1d path IPEX deprecates)
  measured slower than torch's own on an AVX2 CPU.

Never IPEX's traced and frozen path: its fused linear+add writes into its input, so a step's second
call computes on a corrupted tensor. Everything here stays eager.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...cpu import cpu_flags, has_native_bf16
from ...requests import EngineError
from ..options import EngineOptions
from .engine import PyTorchEngine, apply_precision
from .options import IPEX_TORCH, TorchOptions, ipex_problem
from .precision import Precision
from .steps import LinearFactory, TorchSteps

__all__ = ["IpexEngine", "choose_ipex_precision", "import_ipex", "ipex_bf16_prepack"]

_LOGGER = logging.getLogger(__name__)
WOQ_INT8 = "ipex weight-only"
# ipex.optimize for inference, eagerly, with no fx rewrite of our modules (nothing to fold) and its
# default kernels: MKL's packed float32 GEMM. oneDNN's (auto_kernel_selection) measured slower here on
# one-token steps: 8 ms against 1.4 for a 4096x1024 projection in the engine, 2 threads.
_OPTIMIZE = {"inplace": True, "conv_bn_folding": False, "linear_bn_folding": False}


def import_ipex() -> Any:
    """intel_extension_for_pytorch, once the torch beside it is known to be one it runs on.

    Checked first: IPEX 2.8.0 imported beside another torch dies in its own version check.
    """
    problem = ipex_problem()
    if problem is None and not torch.__version__.startswith(IPEX_TORCH):
        problem = f"backend 'ipex' needs torch {IPEX_TORCH}x, this process runs torch {torch.__version__}"
    if problem:
        raise EngineError(problem, "bad-settings")
    import intel_extension_for_pytorch as ipex

    return ipex


def ipex_bf16_prepack(flags: frozenset[str] | None = None) -> bool:
    """True where IPEX prepacks bfloat16 weights (it refuses elsewhere, e.g. on AVX2-only CPUs)."""
    flags = cpu_flags() if flags is None else flags
    return {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags


@dataclass(frozen=True)
class IpexPrecision(Precision):
    """A Precision whose description says that IPEX's kernels run it."""

    def describe(self) -> str:
        if self.int8_kernel:
            return f"IPEX: {super().describe()}"
        return (
            f"IPEX: talker/predictor weights {self.compute_dtype} (ipex.optimize), codec {self.codec_dtype}"
        )


def choose_ipex_precision(options: TorchOptions, flags: frozenset[str] | None = None) -> IpexPrecision:
    """--dtype and --quantize for IPEX: float32 or bfloat16 linears; int8 only when asked for."""
    flags = cpu_flags() if flags is None else flags
    dtype = options.resolved_dtype(has_native_bf16(flags))
    if dtype == "float16":
        raise ValueError("--backend ipex runs float32 or bfloat16, not float16")
    if dtype == "bfloat16" and not ipex_bf16_prepack(flags):
        raise ValueError(
            "--backend ipex: IPEX's bfloat16 linears need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, "
            "which this CPU lacks; use --dtype float32"
        )
    if options.quantize == "int8":
        # Loaded in bfloat16 to halve the peak of loading, as the pytorch backend's int8 does.
        return IpexPrecision("bfloat16", "float32", dtype, WOQ_INT8)
    return IpexPrecision(dtype, dtype, dtype, None)


def optimized_linears(ipex: Any, dtype: torch.dtype) -> LinearFactory:
    """Each projection as IPEX's prepacked linear in dtype."""

    def make(linear: nn.Linear) -> nn.Module:
        (optimized,) = ipex.optimize(
            nn.Sequential(linear.to(dtype)).eval(), dtype=dtype, **_OPTIMIZE
        ).children()
        if (
            type(optimized).__name__ != "_IPEXLinear"
        ):  # a Linear left with prepacked weights fails later, obscurely
            raise EngineError(f"ipex.optimize left {type(optimized).__name__}, not its prepacked linear")
        return optimized

    return make


def weight_only_int8_linears(ipex: Any) -> LinearFactory:
    """Each projection as IPEX's weight-only int8 linear (float32 activations)."""
    quantization = ipex.quantization
    qconfig = quantization.get_weight_only_quant_qconfig_mapping(
        weight_dtype=quantization.WoqWeightDtype.INT8
    )

    def make(linear: nn.Linear) -> nn.Module:
        holder = nn.Sequential(linear.float()).eval()
        example = torch.zeros(1, linear.in_features)
        prepared = quantization.prepare(holder, qconfig, example_inputs=example, inplace=True)
        (converted,) = quantization.convert(prepared, inplace=True).children()  # a GraphModule's child
        return converted

    return make


class IpexEngine(PyTorchEngine):
    """Qwen3-TTS on the qwen-tts model classes; IPEX's kernels for the talker's and predictor's linears."""

    def __init__(self, model_dir: Path, options: EngineOptions, torch_options: TorchOptions) -> None:
        self._ipex = import_ipex()
        super().__init__(model_dir, options, torch_options)

    def _choose_precision(self, options: TorchOptions) -> Precision:
        return choose_ipex_precision(options)

    def _choose_predictor(self, options: TorchOptions) -> str:
        """IPEX's kernels run the predictor too (this environment has torch 2.8 and no OpenVINO)."""
        if options.predictor != "pytorch":
            raise EngineError(
                f"--predictor {options.predictor} runs with --backend pytorch, not ipex", "bad-settings"
            )
        return "pytorch"

    def _steps(self, model: Any, predictor: bool = True) -> TorchSteps:
        if self.precision.int8_kernel == WOQ_INT8:
            kernel = weight_only_int8_linears(self._ipex)
        else:
            kernel = optimized_linears(self._ipex, getattr(torch, self.precision.compute_dtype))
        return apply_precision(model, self.precision, kernel, predictor=predictor)

    def _codec_threads(self, threads: int, options: TorchOptions) -> int:
        """No codec thread: its gain was measured on PyTorch's kernels only (torch 2.8 and IPEX untried)."""
        return 0

    def _compile(self, steps: TorchSteps) -> str:
        _LOGGER.warning("--compile skipped: it applies to --backend pytorch; IPEX runs its own kernels")
        return "not compiled (ipex)"

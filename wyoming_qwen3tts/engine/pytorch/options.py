"""The pytorch and ipex backends' own options and flags, and whether IPEX can run in this environment.

Import-light (no torch): settings.py reads the flags, and engine/registry.py asks `ipex_problem` before
`--backend ipex` is accepted, from package metadata alone.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ...cpu import has_native_bf16
from ...flags import Flag, FlagGroup, boolean, choice
from ..options import DTYPE

ATTENTIONS = ("sdpa", "eager")
QUANTIZE = ("auto", "none", "int8")
# The int8 layers of engine/pytorch/quantize.py; auto: the first this machine runs, in this order.
INT8_KERNELS = ("auto", "packed", "dynamic", "weight-only")
# Where the code predictor runs: PyTorch beside the talker, or an OpenVINO export of it in these weights.
PREDICTORS = ("pytorch", "openvino-int4", "openvino-int8", "openvino-fp16", "openvino-fp32")
IPEX_TORCH = "2.8."  # intel-extension-for-pytorch 2.8.0, its last release, runs on torch 2.8.x only


@dataclass(frozen=True)
class TorchOptions:
    """Number formats and kernels of a model loaded with torch (engine/pytorch/precision.py resolves them)."""

    dtype: str = "auto"  # auto: bfloat16 where the CPU has native bf16, else float32
    attn: str = "sdpa"  # attention implementation while loading
    quantize: str = "auto"  # auto: int8 where this CPU has a fast int8 kernel
    int8_kernel: str = "auto"  # INT8_KERNELS: which int8 layer, auto the fastest available
    compile: bool = False  # torch.compile the float talker/predictor steps (compiled_steps.py)
    trace_steps: bool = True  # record the one-token steps as TorchScript graphs (traced_steps.py)
    fused_steps: bool = True  # one-token steps of packed int8 stacks as one call each (fused_steps.py)
    predictor: str = "pytorch"  # PREDICTORS: beside the talker, or an OpenVINO export of it
    codec_thread: bool = True  # decode on a thread of its own beside the steps (engine/codec_thread.py)

    def resolved_dtype(self, native_bf16: bool | None = None) -> str:
        """The dtype to load with: "auto" is bfloat16 where this CPU has native bf16, else float32."""
        if self.dtype != "auto":
            return self.dtype
        native = has_native_bf16() if native_bf16 is None else native_bf16
        return "bfloat16" if native else "float32"


TORCH_FLAGS = FlagGroup(
    "torch",
    "pytorch and ipex backends",
    TorchOptions,
    (
        DTYPE,
        Flag(
            "attn",
            ("QWEN3TTS_ATTN", "TTS_ATTN"),
            "attention implementation used while loading",
            choice(ATTENTIONS),
            choices=ATTENTIONS,
        ),
        Flag(
            "quantize",
            ("QWEN3TTS_QUANTIZE", "TTS_QUANTIZE"),
            "int8 weights for the talker and code predictor; auto = int8 where this CPU has a fast int8 "
            "kernel",
            choice(QUANTIZE),
            choices=QUANTIZE,
        ),
        Flag(
            "int8_kernel",
            ("QWEN3TTS_INT8_KERNEL",),
            "the int8 layers: packed (our own product, built once with g++), dynamic (FBGEMM's), "
            "weight-only (torch's); auto = the first of these this machine runs",
            choice(INT8_KERNELS),
            choices=INT8_KERNELS,
        ),
        Flag(
            "compile",
            ("QWEN3TTS_COMPILE",),
            "torch.compile the talker's and code predictor's steps when their weights are float (--quantize "
            "none): measured ~5 %% faster in float32 on an AVX2 CPU, minutes of compiling at every start, "
            "needs a C++ compiler",
            boolean,
            action=argparse.BooleanOptionalAction,
        ),
        Flag(
            "trace_steps",
            ("QWEN3TTS_TRACE_STEPS",),
            "record the talker's and code predictor's one-token steps with torch.jit.trace, so their small "
            "ops run from C++ (a quarter faster a frame: docs/speed.md); --no-trace-steps runs them eagerly",
            boolean,
            action=argparse.BooleanOptionalAction,
        ),
        Flag(
            "fused_steps",
            ("QWEN3TTS_FUSED_STEPS",),
            "run each one-token step of the talker and code predictor as one call of our own C++ operator "
            "where their weights are our packed int8 layers (a frame about a quarter faster: docs/speed.md); "
            "--no-fused-steps runs them traced",
            boolean,
            action=argparse.BooleanOptionalAction,
        ),
        Flag(
            "predictor",
            ("QWEN3TTS_PREDICTOR",),
            "where the code predictor runs: pytorch, or an OpenVINO export of it made once in --data-dir "
            "(openvino-int4: a quarter faster on CPUs with AVX512-VNNI or AMX, at a cost in fidelity: "
            "docs/speed.md)",
            choice(PREDICTORS),
            choices=PREDICTORS,
        ),
        Flag(
            "codec_thread",
            ("QWEN3TTS_CODEC_THREAD",),
            "with 2 or more threads and the code predictor on pytorch, decode audio on half the threads "
            "beside the steps, which wait for memory while the codec computes (docs/speed.md); "
            "--no-codec-thread decodes in turn on all threads",
            boolean,
            action=argparse.BooleanOptionalAction,
        ),
    ),
)


def ipex_problem() -> str | None:
    """Why --backend ipex cannot run in this Python environment, or None if it can.

    Read from the installed packages' metadata, importing neither: IPEX 2.8.0
    beside another torch dies on import with an error of its own version check.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    try:
        version("intel-extension-for-pytorch")
    except PackageNotFoundError:
        return (
            f"backend 'ipex' needs intel-extension-for-pytorch, which runs only on torch {IPEX_TORCH}x "
            f"(this environment has torch {torch_version}): run script/setup --ipex once, "
            "then script/run --backend ipex (or use --backend pytorch)"
        )
    if not torch_version.startswith(IPEX_TORCH):
        return (
            f"backend 'ipex' needs torch {IPEX_TORCH}x, this environment has torch {torch_version}: "
            "run script/setup --ipex once, then script/run --backend ipex (or use --backend pytorch)"
        )
    return None

"""Our int8 product (int8_kernel.cpp), compiled on this machine and loaded as the op `qwen3tts::int8_linear`.

A one-token step multiplies one row by each weight matrix: the bytes read set the pace. FBGEMM's dynamic
int8 layer, built for larger matrices, read the code predictor's cache-resident weights at 60-75 % of a
plain read and cost ~12 us a call of fixed work, 428 calls a frame (docs/speed.md, "Our own int8
product"). The op here reads them as one forward stream per thread with VNNI dot products.

engine/native.py builds it (script/setup, else the first model load); where it cannot, `load()` says
why and quantize.py keeps FBGEMM's layer.
"""

from __future__ import annotations

import functools
import logging

import torch

from ...cpu import cpu_flags
from ..native import INT8_PRODUCT, KernelUnavailable, loaded

_LOGGER = logging.getLogger(__name__)

CHANNELS = 64  # output channels of a packed group (int8_kernel.cpp)
# int8_kernel.cpp's paths by the instructions they use (its enum Isa).
ISAS = ("scalar", "avx2", "avx-vnni", "avx512-vnni")


@functools.lru_cache(maxsize=1)
def _loaded() -> KernelUnavailable | None:
    result = loaded(INT8_PRODUCT)
    if isinstance(result, KernelUnavailable):
        _LOGGER.warning("%s; FBGEMM's int8 layers are used instead (slower: docs/speed.md)", result)
        return result
    set_isa(isa_of(cpu_flags()))  # where QWEN3TTS_CPU_FLAGS stands in for another CPU, its paths
    _LOGGER.info("int8 kernel %s (%s)", result, ISAS[int(torch.ops.qwen3tts.int8_isa())])
    return None


def load() -> None:
    """Build (once) and load the op; KernelUnavailable says why it cannot be used here."""
    failure = _loaded()
    if failure is not None:
        raise failure


def isa() -> str:
    """The path the op runs (the best this CPU has, unless set lower by `set_isa`)."""
    load()
    return ISAS[int(torch.ops.qwen3tts.int8_isa())]


def set_isa(name: str) -> str:
    """Run the op on the best path at or below name that the CPU has (tests compare the paths); returns the
    one in use before."""
    return ISAS[int(torch.ops.qwen3tts.int8_set_isa(ISAS.index(name)))]


def isa_of(flags: frozenset[str]) -> str:
    """The best path for CPUs with these /proc/cpuinfo flags."""
    if {"avx512_vnni", "avx512bw"} <= flags:
        return "avx512-vnni"
    if "avx_vnni" in flags:
        return "avx-vnni"
    return "avx2" if {"avx2", "fma"} <= flags else "scalar"


def pack(qweight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights [N, K] -> (packed [groups, K/4, 256] as the op reads them, the correction [groups * 64]
    of its VNNI paths: 128 * each channel's weight sum). Channels and inputs are padded with zeros."""
    n, k = qweight.shape
    kpad = -(-k // 4) * 4
    npad = -(-n // CHANNELS) * CHANNELS
    padded = torch.zeros(npad, kpad, dtype=torch.int8)
    padded[:n, :k] = qweight
    packed = padded.view(npad // CHANNELS, CHANNELS, kpad // 4, 4).permute(0, 2, 1, 3).contiguous()
    correction = torch.zeros(npad, dtype=torch.int32)
    correction[:n] = 128 * qweight.sum(dim=1, dtype=torch.int32)
    return packed.view(npad // CHANNELS, kpad // 4, 4 * CHANNELS), correction

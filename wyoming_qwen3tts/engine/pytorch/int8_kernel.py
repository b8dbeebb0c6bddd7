"""Our int8 product (int8_kernel.cpp), compiled on this machine and loaded as the op `qwen3tts::int8_linear`.

A one-token step multiplies one row by each weight matrix: the bytes read set the pace. FBGEMM's dynamic
int8 layer, built for larger matrices, read the code predictor's cache-resident weights at 60-75 % of a
plain read and cost ~12 us a call of fixed work, 428 calls a frame (docs/speed.md, "Our own int8
product"). The op here reads them as one forward stream per thread with VNNI dot products.

It is compiled once per source, torch and Python version with the C++ compiler (`$CXX`, else g++):
`script/setup` builds it (`python -m wyoming_qwen3tts.engine.pytorch.int8_kernel`), else the first
model load does (about 15 s), into `$QWEN3TTS_KERNEL_DIR` (default ~/.cache/wyoming-qwen3tts/kernels).
Where no compiler is found or the build fails, `load()` says why and quantize.py keeps FBGEMM's layer.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ...cpu import cpu_flags

_LOGGER = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("int8_kernel.cpp")
CHANNELS = 64  # output channels of a packed group (int8_kernel.cpp)
# int8_kernel.cpp's paths by the instructions they use (its enum Isa).
ISAS = ("scalar", "avx2", "avx-vnni", "avx512-vnni")
BUILD_SECONDS = 300


class KernelUnavailable(RuntimeError):
    """The op could not be built or loaded here (the message says why and what to do)."""


def kernel_dir() -> Path:
    """Where built kernels are kept: $QWEN3TTS_KERNEL_DIR, else the user's cache."""
    configured = os.environ.get("QWEN3TTS_KERNEL_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "wyoming-qwen3tts" / "kernels"


def _torch_dir() -> Path:
    return Path(torch.__file__).parent


def _compile_command(compiler: str, output: Path) -> list[str]:
    torch_dir = _torch_dir()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        compiler,
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        # at::parallel_for's OpenMP loop; the library links torch's own OpenMP runtime, already loaded.
        "-fopenmp",
        # No fused multiply-adds: every path rounds the scaling the same way.
        "-ffp-contract=off",
        "-w",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        str(SOURCE),
        "-o",
        str(output),
        f"-L{torch_dir / 'lib'}",
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
    ]


def library_path(directory: Path | None = None) -> Path:
    """The built library for this source, torch and Python (a new one of any of them rebuilds)."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(f"{torch.__version__} {sys.version} {' '.join(_compile_command('c++', Path('x')))}".encode())
    return (directory or kernel_dir()) / f"int8_kernel-{key.hexdigest()[:16]}.so"


def build(directory: Path | None = None) -> Path:
    """Compile the op into directory (kept if already built); KernelUnavailable if it cannot be."""
    target = library_path(directory)
    if target.exists():
        return target
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise KernelUnavailable(
            f"no C++ compiler ({compiler}) to build the int8 kernel: install g++ (Debian: apt-get install "
            "g++) and restart, or set QWEN3TTS_KERNEL_DIR to a directory holding a built one"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KernelUnavailable(f"cannot create {target.parent} for the int8 kernel: {err}") from err
    # Built under a temporary name and renamed, so a process that loads it never sees half a file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        output = Path(scratch) / target.name
        _LOGGER.info("Building the int8 kernel with %s (once, about 15 s)", compiler)
        try:
            result = subprocess.run(
                _compile_command(compiler, output), capture_output=True, text=True, timeout=BUILD_SECONDS
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelUnavailable(f"building the int8 kernel failed: {err}") from err
        if result.returncode != 0:
            raise KernelUnavailable(f"building the int8 kernel failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(output, target)
    return target


@functools.lru_cache(maxsize=1)
def _loaded() -> Path | KernelUnavailable:
    try:
        path = build()
        torch.ops.load_library(str(path))
        set_isa(isa_of(cpu_flags()))  # where QWEN3TTS_CPU_FLAGS stands in for another CPU, its paths
    except KernelUnavailable as err:
        failure = err
    except (OSError, RuntimeError) as err:  # a library built for another torch, a broken file
        failure = KernelUnavailable(f"loading the int8 kernel failed: {err}")
    else:
        _LOGGER.info("int8 kernel %s (%s)", path, ISAS[int(torch.ops.qwen3tts.int8_isa())])
        return path
    _LOGGER.warning("%s; FBGEMM's int8 layers are used instead (slower: docs/speed.md)", failure)
    return failure


def load() -> None:
    """Build (once) and load the op; KernelUnavailable says why it cannot be used here."""
    result = _loaded()
    if isinstance(result, KernelUnavailable):
        raise result


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


def main() -> None:
    """Build the op now (script/setup does), so that the first start does not wait for it. Loading logs
    where it is and which path it runs, or why it cannot be used (then the exit status is 1)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if isinstance(_loaded(), KernelUnavailable):
        sys.exit(1)


if __name__ == "__main__":
    main()

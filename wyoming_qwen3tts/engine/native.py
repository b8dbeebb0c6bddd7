"""Our C++ operators, compiled on this machine with the C++ compiler and loaded into torch.

Two sources, each its own library: the int8 product of the talker's and code predictor's steps
(pytorch/int8_kernel.cpp) and the codec's fused activation (snake_kernel.cpp). Each is compiled once per
source, torch and Python version (`$CXX`, else g++): `script/setup` builds them all
(`python -m wyoming_qwen3tts.engine.native`), else the first use does (about 10 s each), into
`$QWEN3TTS_KERNEL_DIR` (default ~/.cache/wyoming-qwen3tts/kernels). Where no compiler is found or a build
fails, `loaded()` returns why and its caller keeps the plain PyTorch (or FBGEMM) way.
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

_LOGGER = logging.getLogger(__name__)

INT8_PRODUCT = Path(__file__).parent / "pytorch" / "int8_kernel.cpp"
SNAKE = Path(__file__).with_name("snake_kernel.cpp")
SOURCES = (INT8_PRODUCT, SNAKE)
BUILD_SECONDS = 300


class KernelUnavailable(RuntimeError):
    """An operator could not be built or loaded here (the message says why and what to do)."""


def kernel_dir() -> Path:
    """Where built libraries are kept: $QWEN3TTS_KERNEL_DIR, else the user's cache."""
    configured = os.environ.get("QWEN3TTS_KERNEL_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "wyoming-qwen3tts" / "kernels"


def _compile_command(compiler: str, source: Path, output: Path) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        compiler,
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        # at::parallel_for's OpenMP loop; the library links torch's own OpenMP runtime, already loaded.
        "-fopenmp",
        # No fused multiply-adds: every instruction-set path rounds the same way, so gives the same bits.
        "-ffp-contract=off",
        "-w",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{torch_dir / 'include'}",
        f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        str(source),
        "-o",
        str(output),
        f"-L{torch_dir / 'lib'}",
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
    ]


def library_path(source: Path, directory: Path | None = None) -> Path:
    """The built library of this source for this torch and Python (a new one of any of them rebuilds)."""
    key = hashlib.sha256()
    key.update(source.read_bytes())
    command = " ".join(_compile_command("c++", Path("source.cpp"), Path("x")))
    key.update(f"{torch.__version__} {sys.version} {command}".encode())
    return (directory or kernel_dir()) / f"{source.stem}-{key.hexdigest()[:16]}.so"


def build(source: Path, directory: Path | None = None) -> Path:
    """Compile source into directory (kept if already built); KernelUnavailable if it cannot be."""
    target = library_path(source, directory)
    if target.exists():
        return target
    what = f"the {source.stem.replace('_', ' ')}"
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise KernelUnavailable(
            f"no C++ compiler ({compiler}) to build {what}: install g++ (Debian: apt-get install g++) and "
            "restart, or set QWEN3TTS_KERNEL_DIR to a directory holding a built one"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KernelUnavailable(f"cannot create {target.parent} for {what}: {err}") from err
    # Built under a temporary name and renamed, so a process that loads it never sees half a file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        output = Path(scratch) / target.name
        _LOGGER.info("Building %s with %s (once, about 10 s)", what, compiler)
        try:
            result = subprocess.run(
                _compile_command(compiler, source, output),
                capture_output=True,
                text=True,
                timeout=BUILD_SECONDS,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise KernelUnavailable(f"building {what} failed: {err}") from err
        if result.returncode != 0:
            raise KernelUnavailable(f"building {what} failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(output, target)
    return target


@functools.cache
def loaded(source: Path) -> Path | KernelUnavailable:
    """Build (once) and load source's operators into torch: the library, or why it cannot be used."""
    try:
        path = build(source)
        torch.ops.load_library(str(path))
    except KernelUnavailable as err:
        return err
    except (OSError, RuntimeError) as err:  # a library built for another torch, a broken file
        return KernelUnavailable(f"loading {source.stem} failed: {err}")
    return path


def main() -> None:
    """Build every operator now (script/setup does), so that the first start does not wait for them;
    the exit status is 1 if one cannot be built (the log says why)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = False
    for source in SOURCES:
        result = loaded(source)
        if isinstance(result, KernelUnavailable):
            _LOGGER.warning("%s", result)
            failed = True
        else:
            _LOGGER.info("%s: %s", source.name, result)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

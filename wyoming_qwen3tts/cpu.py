"""What the CPU we run on can do, read from the kernel, for the "auto" choices.

Defaults must follow the user's CPU (an i5 without native bf16 is the
reference box), never the machine the project was built on.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

# Space-separated flags that replace /proc/cpuinfo's: what "auto" would choose on another CPU (e.g. an
# AVX2 laptop's, measured on an AVX-512 machine with the kernel libraries held to AVX2: docs/speed.md).
CPU_FLAGS_VARIABLE = "QWEN3TTS_CPU_FLAGS"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none), or of
    $QWEN3TTS_CPU_FLAGS where set."""
    override = os.environ.get(CPU_FLAGS_VARIABLE)
    if override is not None:
        return frozenset(override.split())
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True where bfloat16 matrix math runs in hardware (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def usable_cpus() -> set[int]:
    """Logical CPUs this process may run on (respects taskset and container CPU sets)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def default_threads(cpus: set[int] | None = None, sysfs: Path = Path("/sys/devices")) -> int:
    """Torch threads for --threads 0: one per physical core we may use, on performance cores only.

    The one-token matrix products are bound by memory bandwidth, which a second hyper-thread on a
    core does not add to; and OpenMP splits work evenly, so on a hybrid CPU (i5-1240P: 4 P-cores
    with 2 threads each, 8 E-cores) every step would wait for the slower E-cores. Where the kernel
    does not say (no sysfs topology), every usable logical CPU counts.
    """
    cpus = usable_cpus() if cpus is None else cpus
    performance = _cpu_list(sysfs / "cpu_core" / "cpus")  # Intel hybrid: the P-cores
    if performance and cpus & performance:
        cpus = cpus & performance
    cores = set()
    for cpu in cpus:
        topology = sysfs / "system" / "cpu" / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def _cpu_list(path: Path) -> set[int]:
    """A kernel CPU list ("0-7,16") as a set; empty where the file is missing."""
    try:
        text = path.read_text().strip()
    except OSError:
        return set()
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus

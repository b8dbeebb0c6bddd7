"""The "auto" thread count from the kernel's CPU topology, on the CPUs users have."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from wyoming_qwen3tts.cpu import CPU_FLAGS_VARIABLE, default_threads, has_native_bf16


def fake_sysfs(root: Path, cores: list[list[int]], performance: str | None = None) -> Path:
    """A /sys/devices tree: cores lists the logical CPUs of each physical core."""
    for core_id, siblings in enumerate(cores):
        for cpu in siblings:
            topology = root / "system" / "cpu" / f"cpu{cpu}" / "topology"
            topology.mkdir(parents=True)
            (topology / "physical_package_id").write_text("0\n")
            (topology / "core_id").write_text(f"{core_id}\n")
    if performance is not None:
        (root / "cpu_core").mkdir(parents=True)
        (root / "cpu_core" / "cpus").write_text(performance + "\n")
    return root


# i5-1240P: 4 P-cores with two threads each (CPUs 0-7), 8 E-cores with one each (CPUs 8-15).
I5_1240P = [[0, 1], [2, 3], [4, 5], [6, 7], *([cpu] for cpu in range(8, 16))]


def test_hybrid_laptop_uses_one_thread_per_performance_core(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, I5_1240P, performance="0-7")
    assert default_threads(set(range(16)), sysfs) == 4


def test_hybrid_laptop_pinned_to_e_cores_uses_them(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, I5_1240P, performance="0-7")
    assert default_threads(set(range(8, 12)), sysfs) == 4


def test_hyper_threaded_desktop_uses_physical_cores(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, [[core, core + 8] for core in range(8)])
    assert default_threads(set(range(16)), sysfs) == 8
    assert default_threads({0, 8, 1}, sysfs) == 2  # taskset: two cores, one of them with both threads


def test_two_core_vm_uses_both(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, [[0], [1]])
    assert default_threads({0, 1}, sysfs) == 2


def test_without_topology_every_usable_cpu_counts(tmp_path: Path) -> None:
    assert default_threads({0, 1, 2}, tmp_path / "missing") == 3


def test_this_machine_gets_at_least_one_thread() -> None:
    assert default_threads() >= 1


def test_native_bf16_needs_the_instructions() -> None:
    assert has_native_bf16(frozenset({"avx512_bf16"}))
    assert has_native_bf16(frozenset({"amx_bf16", "avx2"}))
    assert not has_native_bf16(frozenset({"avx2", "avx_vnni", "fma"}))  # the i5-1240P's kind


def test_cpu_flags_variable_makes_auto_choose_for_that_cpu() -> None:
    """$QWEN3TTS_CPU_FLAGS stands in for /proc/cpuinfo: the same "auto" precision, whatever CPU runs it."""
    script = (
        "from wyoming_qwen3tts.engine.pytorch.options import TorchOptions\n"
        "from wyoming_qwen3tts.engine.pytorch.precision import choose_precision\n"
        "print(choose_precision(TorchOptions(), kernels=['dynamic']).codec_dtype)"
    )
    chosen = {}
    for name, flags in (
        ("i5-1240P", "sse4_2 avx avx2 fma avx_vnni"),
        ("Xeon", "avx2 avx512f avx512_bf16 amx_bf16"),
    ):
        env = {**os.environ, CPU_FLAGS_VARIABLE: flags}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        chosen[name] = done.stdout.strip()
    assert chosen == {"i5-1240P": "float32", "Xeon": "bfloat16"}

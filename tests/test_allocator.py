"""The server's malloc (allocator.py): started without tcmalloc, it starts itself again on it where the
system has it, once, with the same command line; it says which malloc it runs on; asked for tcmalloc
where there is none, it exits naming the package. The end-to-end tests that need tcmalloc run where it
is installed (libtcmalloc-minimal4); the rest run everywhere."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK, run_server_command, running_server
from test_server import audio_of, is_audio_stop, send
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_qwen3tts import allocator
from wyoming_qwen3tts.allocator import RESTARTED, AllocatorError, find_tcmalloc, restart_environment

TCMALLOC = find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None, reason="no tcmalloc library on this machine")


@pytest.fixture
def tcmalloc_found(monkeypatch) -> str:
    """As on a machine with tcmalloc installed, in a process that does not run on it yet."""
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    return "libtcmalloc_minimal.so.4"


def test_the_restart_preloads_tcmalloc_before_what_was_preloaded(tcmalloc_found):
    environ = {"PATH": "/usr/bin", "LD_PRELOAD": "libmine.so"}
    restarted = restart_environment("auto", environ)
    assert restarted is not None
    assert restarted["LD_PRELOAD"] == f"{tcmalloc_found} libmine.so"
    assert restarted[RESTARTED] == tcmalloc_found
    assert restarted["PATH"] == "/usr/bin"
    assert int(restarted["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40  # no reports of a model's load
    assert restart_environment("tcmalloc", {})["LD_PRELOAD"] == tcmalloc_found  # type: ignore[index]
    mine = restart_environment("auto", {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"})
    assert mine is not None and mine["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"  # the user's wins


def test_no_restart_for_the_system_malloc_or_where_tcmalloc_runs_already(tcmalloc_found, monkeypatch):
    assert restart_environment("system", {}) is None
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: True)
    assert restart_environment("auto", {}) is None
    assert restart_environment("tcmalloc", {}) is None


def test_openvino_stays_on_the_c_library_malloc(tcmalloc_found, monkeypatch):
    """OpenVINO's wheel aborts on a preloaded malloc: auto keeps the C library's, tcmalloc by name is
    refused with the reason, and tcmalloc preloaded by hand is named before OpenVINO would abort."""
    why = allocator.conflict("openvino", "pytorch")
    assert why is not None and "OpenVINO" in why
    assert allocator.conflict("pytorch", "openvino-int4") == why
    assert allocator.conflict("pytorch", "pytorch") is None and allocator.conflict("ipex", "pytorch") is None
    assert restart_environment("auto", {}, why) is None
    with pytest.raises(AllocatorError, match="--allocator tcmalloc: OpenVINO"):
        restart_environment("tcmalloc", {}, why)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: True)
    with pytest.raises(AllocatorError, match="remove it from LD_PRELOAD"):
        restart_environment("system", {}, why)


def test_a_restarted_process_never_restarts_again(tcmalloc_found):
    """Where the preload did not take (the loader printed why), auto goes on with the C library's malloc;
    tcmalloc by name stops with the reason."""
    assert restart_environment("auto", {RESTARTED: tcmalloc_found}) is None
    with pytest.raises(AllocatorError, match="was preloaded but is not in use"):
        restart_environment("tcmalloc", {RESTARTED: tcmalloc_found})


def test_without_tcmalloc_auto_keeps_the_c_library_and_tcmalloc_names_the_package(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    assert restart_environment("auto", {}) is None
    with pytest.raises(AllocatorError, match="apt install libtcmalloc-minimal4"):
        restart_environment("tcmalloc", {})


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _speaks(uri: str) -> bool:
    event = Synthesize(text="Hello there.", voice=SynthesizeVoice(name="ryan")).event()
    return audio_of(asyncio.run(send(uri, event, until=is_audio_stop))).size > 0


@needs_tcmalloc
def test_the_server_starts_itself_again_on_tcmalloc_and_speaks(tiny_models):
    with running_server(["--model", str(tiny_models["custom_voice"]), *QUICK]) as server:
        # exec keeps the process: the pid the user started now runs on tcmalloc
        assert "tcmalloc" in _maps(server.process.pid)
        assert _speaks(server.uri)
        assert "Memory allocator: tcmalloc" in server.log()


def test_the_server_says_which_malloc_it_runs_on(tiny_models):
    args = ["--model", str(tiny_models["custom_voice"]), *QUICK, "--allocator", "system"]
    with running_server(args) as server:
        assert "tcmalloc" not in _maps(server.process.pid)
        assert _speaks(server.uri)
        assert "Memory allocator: the C library's (--allocator system)" in server.log()


def test_tcmalloc_asked_for_with_openvino_is_one_clear_line(tiny_models):
    result = run_server_command(
        ["--model", str(tiny_models["custom_voice"]), "--backend", "openvino", "--allocator", "tcmalloc"]
    )
    assert result.returncode == 2
    assert "--allocator tcmalloc: OpenVINO" in result.stderr and "Traceback" not in result.stderr


@needs_tcmalloc
def test_free_memory_goes_back_to_the_system_on_tcmalloc():
    """The idle release (memory.release_free_memory) calls tcmalloc's own release where it is the malloc:
    glibc's malloc_trim would find nothing of tcmalloc's heap to give back."""
    script = (
        "from wyoming_qwen3tts.allocator import tcmalloc_loaded\n"
        "from wyoming_qwen3tts.memory import release_free_memory\n"
        "assert tcmalloc_loaded()\n"
        "blocks = [bytearray(2**20) for _ in range(128)]\n"
        "del blocks\n"
        "print(release_free_memory())\n"
    )
    environ = restart_environment("tcmalloc", {"PATH": "/usr/bin"})
    assert environ is not None
    result = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=60, check=True
    )
    assert int(result.stdout.split()[-1]) >= 64 * 2**20

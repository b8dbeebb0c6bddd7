"""Which malloc the server runs on: tcmalloc where the system has it, else the C library's.

A sentence allocates and frees thousands of tensors a frame, and the codec's large blocks on a thread
of their own. glibc's malloc gives that thread a heap of its own and keeps what its passes freed;
tcmalloc (gperftools) reuses freed blocks across threads. Measured through the server (docs/speed.md,
"The allocator"): on tcmalloc as fast or up to 6 % faster, first audio 30-110 ms sooner, the peak
resident size 350-400 MB lower, 26 MB a further sentence in flight against 46 on glibc's malloc. It is
a system library (Debian and Ubuntu: libtcmalloc-minimal4, in the Docker image and the add-on), not a
Python package.

A malloc must be in place before the program's first allocation: the dynamic loader puts it there when
LD_PRELOAD names it. So a server started without it starts itself again, once, with it, before torch is
imported: the same process (exec), the same command line. Not where OpenVINO runs in the process: the
hwloc library its wheel ships frees memory with the C library's free, and the process aborts (jemalloc
too); that server stays on the C library's malloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping

ALLOCATORS = ("auto", "tcmalloc", "system")
# gperftools' libraries by their link names: the minimal one (no heap profiler) first.
TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")
# Set in the restarted process's environment: the library it was started with (so it never loops).
RESTARTED = "QWEN3TTS_ALLOCATOR_RESTARTED"
# tcmalloc reports every allocation above 1 GB on stderr (loading a model makes some): not an error here.
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


class AllocatorError(RuntimeError):
    """The allocator asked for cannot be used; the message says how to get it."""


def tcmalloc_release() -> Callable[[], None] | None:
    """tcmalloc's call that gives its free pages back to the system, where tcmalloc is this process's
    malloc (its extension functions are then in the process); else None."""
    release = getattr(ctypes.CDLL(None), "MallocExtension_ReleaseFreeMemory", None)
    if release is not None:
        release.restype = None
    return release


def tcmalloc_loaded() -> bool:
    """Whether this process's malloc is tcmalloc."""
    return tcmalloc_release() is not None


def find_tcmalloc() -> str | None:
    """The file name of a tcmalloc library the dynamic loader can find, without loading it here."""
    for name in TCMALLOC_NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def conflict(backend: str, predictor: str) -> str | None:
    """Why a server with this backend and code predictor cannot run on tcmalloc; None where it can."""
    if backend == "openvino" or predictor.startswith("openvino"):
        return (
            "OpenVINO (--backend openvino, --predictor openvino-*) aborts on a preloaded malloc (the hwloc "
            "library its wheel ships frees memory with the C library's free)"
        )
    return None


def restart_environment(
    choice: str, environ: Mapping[str, str], conflicting: str | None = None
) -> dict[str, str] | None:
    """The environment to start this program again with, so that it runs on tcmalloc; None where it
    already does, where `choice` does not want it, where what it runs cannot (`conflicting` says why),
    or where it was tried and did not take."""
    if tcmalloc_loaded():
        if conflicting is not None:  # preloaded by hand
            raise AllocatorError(
                f"tcmalloc is preloaded (LD_PRELOAD), but {conflicting}; remove it from LD_PRELOAD"
            )
        return None
    if choice == "system":
        return None
    if conflicting is not None:
        if choice == "tcmalloc":
            raise AllocatorError(f"--allocator tcmalloc: {conflicting}; use --allocator auto or system")
        return None
    if environ.get(RESTARTED):  # preloaded, and yet not this process's malloc (the loader said why)
        if choice == "tcmalloc":
            raise AllocatorError(
                f"--allocator tcmalloc: {environ[RESTARTED]} was preloaded but is not in use (see the "
                "dynamic loader's message above); use --allocator auto or system"
            )
        return None
    library = find_tcmalloc()
    if library is None:
        if choice == "tcmalloc":
            raise AllocatorError(
                "--allocator tcmalloc: no tcmalloc library found; install it (Debian, Ubuntu: "
                "apt install libtcmalloc-minimal4, on Ubuntu 24.04 libtcmalloc-minimal4t64; Fedora: dnf "
                "install gperftools-libs) or use --allocator auto"
            )
        return None
    preload = " ".join(filter(None, (library, environ.get("LD_PRELOAD", ""))))
    return {**QUIET, **environ, "LD_PRELOAD": preload, RESTARTED: library}


def restart_with_tcmalloc(choice: str, conflicting: str | None = None) -> None:
    """Replace this process by the same command line on tcmalloc, if `choice` wants it, nothing conflicts
    and it is found; return where nothing is to be done. Call it before torch is imported: that is what
    the restart repeats."""
    environ = restart_environment(choice, os.environ, conflicting)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def describe_allocator(choice: str, conflicting: str | None = None) -> str:
    """Which malloc this process runs on, for the start-up log (and what to install where it could be
    faster)."""
    if tcmalloc_loaded():
        return "tcmalloc"
    if choice == "system":
        return "the C library's (--allocator system)"
    if conflicting is not None:
        return f"the C library's: {conflicting}"
    if os.environ.get(RESTARTED):
        return f"the C library's ({os.environ[RESTARTED]} was preloaded but did not take)"
    return "the C library's (install libtcmalloc-minimal4 for a faster server that holds less memory)"

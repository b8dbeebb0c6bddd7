"""How the process holds its memory: what it freed goes back to the system, the model sits on 2 MB pages.

glibc's malloc keeps what PyTorch, oneDNN and the codec free in its heaps, ready for reuse, and the
resident size of the server stays at its high-water mark: measured on the 0.6B int8 engine, 125-290 MB
of freed memory after a sentence (most after the first, whose codec pass prepares oneDNN's
convolutions), on a mini PC that shares its RAM with everything else. `malloc_trim(0)` returns those
pages in 11-16 ms; the inference worker (worker.py) calls it once it has been idle for a while, never
between the frames of a sentence. On tcmalloc (allocator.py) its own call does the same (its free
pages go back to the system); where the C library has no malloc_trim (musl, macOS) nothing happens.

Every step of a frame streams hundreds of megabytes of weights from memory, page after page: on 4 KB
pages that is a miss in the address-translation cache every 4 KB. Linux can hold the same memory on
2 MB pages (transparent huge pages), but where it is set to `madvise`, the default of many
distributions, it does so only for memory the program asked for before touching it, and the model's
weights are allocated by PyTorch, FBGEMM and oneDNN, not by us. `MADV_COLLAPSE` (Linux 6.1) moves
memory already in use onto 2 MB pages, once, and changes nothing for memory allocated later:
`collapse_loaded_memory` applies it, once the model is loaded, to every 2 MB block of the process's
private memory whose pages are all resident, so no page that was not resident becomes so. Measured on
the 0.6B int8 engine (docs/speed.md, "Huge pages"): a frame about 7 % faster, resident memory unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator

from .allocator import tcmalloc_release

_LOGGER = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def _release() -> Callable[[], object] | None:
    """The call that gives the heap's free pages back: tcmalloc's where it is this process's malloc (its
    functions are then in the process), else the C library's malloc_trim."""
    tcmalloc = tcmalloc_release()
    if tcmalloc is not None:
        return tcmalloc
    trim = getattr(_libc(), "malloc_trim", None)
    return None if trim is None else lambda: trim(0)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc does not say."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> int | None:
    """Give the C heap's free pages back to the system; return the resident bytes that went (None where
    this C library cannot)."""
    release = _release()
    if release is None:
        return None
    before = resident_bytes()
    release()
    after = resident_bytes()
    released = None if before is None or after is None else max(0, before - after)
    if released is not None:
        _LOGGER.debug("Gave %.0f MB of freed memory back to the system", released / 2**20)
    return released


MADV_COLLAPSE = 25  # linux/mman.h, Linux 6.1
_HUGE_PAGE_SIZE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"


def collapse_loaded_memory() -> str:
    """Put the fully resident 2 MB blocks of this process's private memory (the loaded model, above all)
    on huge pages; return what happened, for the log. The heap's free blocks move too: trimming them
    first would make the first sentences fault their pages in again."""
    started = time.monotonic()
    try:
        with open(_HUGE_PAGE_SIZE, encoding="ascii") as size_file:
            huge = int(size_file.read())
        madvise = _madvise()
        blocks = list(_resident_blocks(huge))
    except (OSError, ValueError, AttributeError) as err:
        return f"memory left on small pages ({type(err).__name__}: {err})"
    before = _huge_resident()
    refused: dict[int, int] = {}  # errno -> runs: EINVAL where the kernel predates MADV_COLLAPSE or a
    for start, length in blocks:  # mapping may not move; EAGAIN/ENOMEM where no free 2 MB page was found
        if madvise(start, length, MADV_COLLAPSE) != 0:
            errno = ctypes.get_errno()
            refused[errno] = refused.get(errno, 0) + 1
    after = _huge_resident()
    moved = max(0, after - before) if before is not None and after is not None else 0
    outcome = f"{moved / 2**20:.0f} MB of memory moved onto 2 MB pages in {time.monotonic() - started:.1f} s"
    if refused:
        reasons = ", ".join(f"{os.strerror(errno)} x{count}" for errno, count in sorted(refused.items()))
        if not moved:
            return f"memory left on small pages (madvise(MADV_COLLAPSE): {reasons})"
        outcome += f" (some refused: {reasons})"
    return outcome


def _madvise() -> Callable[[int, int, int], int]:
    libc = _libc()
    if libc is None:
        raise OSError("no C library found")
    madvise = libc.madvise  # AttributeError where it has no madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def _resident_blocks(huge: int) -> Iterator[tuple[int, int]]:
    """(start, length) of each run of huge-page-aligned blocks whose pages are all resident, in private
    anonymous writable mappings: the heap and malloc's own mappings, not files (a thread's stack is one
    too, but never all resident)."""
    page = os.sysconf("SC_PAGE_SIZE")
    per_block = huge // page
    with open("/proc/self/maps", encoding="ascii") as maps, open("/proc/self/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            if fields[1] != "rw-p" or fields[4] != "0" or name not in ("", "[heap]"):
                continue
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            first, last = -(-low // huge) * huge, high // huge * huge
            if last <= first:
                continue
            pagemap.seek(first // page * 8)
            entries = pagemap.read((last - first) // page * 8)
            # One 64-bit entry a page; bit 63 (the top bit of its last byte) says it is resident.
            flags = entries[7::8]
            run_start = None
            for index, address in enumerate(range(first, last, huge)):
                full = min(flags[index * per_block : (index + 1) * per_block]) >= 0x80
                if full and run_start is None:
                    run_start = address
                elif not full and run_start is not None:
                    yield run_start, address - run_start
                    run_start = None
            if run_start is not None:
                yield run_start, last - run_start


def _huge_resident() -> int | None:
    """Bytes of this process's private memory on huge pages (Linux)."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None

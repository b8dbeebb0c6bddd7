"""How the process holds its memory (memory.py): on glibc, pages of free heap leave the resident set
(elsewhere the call says it could not); on Linux 6.1 or later, resident memory moves onto 2 MB pages
and memory that was not resident stays out."""

from __future__ import annotations

import ctypes
import mmap
import platform
from pathlib import Path

import pytest

from wyoming_qwen3tts.memory import (
    _HUGE_PAGE_SIZE,
    _huge_resident,
    collapse_loaded_memory,
    release_free_memory,
    resident_bytes,
)

SMALL_PAGES = "memory left on small pages"
needs_huge_pages = pytest.mark.skipif(
    not Path(_HUGE_PAGE_SIZE).exists(), reason="no transparent huge pages in this kernel"
)


def _private_buffer(size: int) -> tuple[mmap.mmap, ctypes.Array]:
    """size bytes of private anonymous memory (as malloc maps large blocks), none of it resident yet."""
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mapping, (ctypes.c_char * size).from_buffer(mapping)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_free_heap_pages_leave_the_resident_set() -> None:
    # 128 MB in blocks below malloc's mmap threshold, so they come from the heap; the last one stays,
    # so free() cannot shrink the heap from its top and the pages stay resident until released.
    blocks = [bytearray(64 * 1024) for _ in range(2048)]
    kept = blocks[-1]
    before = resident_bytes()
    del blocks
    released = release_free_memory()
    after = resident_bytes()
    assert kept is not None
    assert before is not None and after is not None and released is not None
    assert released >= 64 * 2**20
    assert before - after >= 64 * 2**20


@needs_huge_pages
def test_resident_memory_moves_onto_huge_pages_with_its_contents() -> None:
    size = 64 * 2**20
    mapping, buffer = _private_buffer(size)
    pattern = bytes(range(256)) * (size // 256)
    buffer[:] = pattern  # every page resident, as a loaded model's weights are
    before = _huge_resident()
    outcome = collapse_loaded_memory()
    if outcome.startswith(SMALL_PAGES) and "Invalid argument" in outcome:
        pytest.skip(f"kernel without MADV_COLLAPSE: {outcome}")
    after = _huge_resident()
    assert before is not None and after is not None
    assert after - before >= size - 4 * 2**20, outcome  # all but the unaligned ends of the buffer
    assert "MB of memory moved onto 2 MB pages" in outcome
    assert buffer.raw == pattern
    del buffer
    mapping.close()


@needs_huge_pages
def test_memory_not_resident_stays_out() -> None:
    """A block only partly resident (a KV cache written at its first positions, a thread's stack) is left
    alone: moving it onto a 2 MB page would make all of it resident."""
    size = 64 * 2**20
    mapping, buffer = _private_buffer(size)
    for offset in range(0, size, 256 * 1024):  # one page in every 64: no 2 MB block whole
        buffer[offset] = b"x"
    before = resident_bytes()
    outcome = collapse_loaded_memory()
    after = resident_bytes()
    assert before is not None and after is not None
    assert after - before < 8 * 2**20, outcome  # the partly written 64 MB would add ~60 MB
    del buffer
    mapping.close()


@needs_huge_pages
def test_the_server_moves_its_loaded_model_unless_told_not_to(tiny_models) -> None:
    from conftest import QUICK, running_server

    args = ["--model", str(tiny_models["custom_voice"]), *(arg for arg in QUICK if arg != "--no-huge-pages")]
    with running_server(args) as server:
        pass
    with running_server([*args, "--no-huge-pages"]) as small:
        pass
    said = [line for line in server.log().splitlines() if "2 MB pages" in line or SMALL_PAGES in line]
    assert len(said) == 1 and "engine.registry" in said[0], server.log()[-2000:]
    assert "2 MB pages" not in small.log() and SMALL_PAGES not in small.log()

"""Freed memory given back to the system (memory.py): on glibc, pages of free heap leave the resident
set; elsewhere the call says it could not."""

from __future__ import annotations

import platform

import pytest

from wyoming_qwen3tts.memory import release_free_memory, resident_bytes


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

"""Hand back the pages of a mapped checkpoint once loading has read them.

transformers maps model.safetensors into memory and the loaded tensors point
into that mapping. Converting the weights (to float32, to int8) reads every
page, and each page read stays in the process's resident set for as long as
the mapping lives, which is as long as any tensor (the text embedding, the
codec's float32 weights) still points into it: 1.5 GB of the 0.6B model's
3.3 GB peak. Those pages are unmodified copies of the file, so telling the
kernel we are done with them (madvise MADV_DONTNEED) drops them from the
resident set; a tensor still in the mapping reads its page back from the page
cache on its next use (the text embedding touches one row per prompt token).
A mapping with a page written to it (copy-on-write) is left alone: dropping it
would undo the write. OpenVINO maps an export's .bin files the same way and
repacks the weights on first inference: the mapped pages are then the same
kind of dead weight.
"""

from __future__ import annotations

import ctypes
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

MADV_DONTNEED = 4  # linux/mman-common.h
CHECKPOINT_SUFFIXES = (".safetensors", ".bin")  # transformers' checkpoints; OpenVINO's weight files
_MAPPING_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


@dataclass(frozen=True)
class FileMapping:
    """One mapping of a checkpoint file, as /proc/self/smaps describes it."""

    start: int
    end: int
    path: str
    private: bool
    resident_kb: int
    written_kb: int  # pages copied on write: no longer the file's bytes


def checkpoint_mappings(smaps: Path = Path("/proc/self/smaps")) -> list[FileMapping]:
    """The mappings of checkpoint files in this process (none where /proc is missing)."""
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return []
    mappings: list[FileMapping] = []
    current: dict | None = None

    def close() -> None:
        if current is not None and current["path"].endswith(CHECKPOINT_SUFFIXES):
            mappings.append(FileMapping(**current))

    for line in lines:
        header = _MAPPING_HEADER.match(line)
        if header:
            close()
            start, end, perms, path = header.groups()
            current = {
                "start": int(start, 16),
                "end": int(end, 16),
                "path": path,
                "private": perms[3] == "p",
                "resident_kb": 0,
                "written_kb": 0,
            }
        elif current is not None and line.startswith(("Rss:", "Anonymous:")):
            key = "resident_kb" if line.startswith("Rss:") else "written_kb"
            current[key] = int(line.split()[1])
    close()
    return mappings


class CheckpointPages:
    """The checkpoint mappings whose pages are all still the file's, found once, released often.

    Finding them reads /proc/self/smaps, about 70 ms in a process with torch loaded; releasing
    is one madvise per mapping. Loading takes one snapshot after transformers has mapped the
    files (the only code that might write into them) and releases after each converted layer.
    """

    def __init__(self) -> None:
        self.mappings: list[FileMapping] = []
        for mapping in checkpoint_mappings():
            if mapping.private and mapping.written_kb:
                _LOGGER.debug("Keeping the pages of %s: some were written to", mapping.path)
            else:
                self.mappings.append(mapping)

    def release(self) -> None:
        """Drop the resident pages of the clean mappings (a no-op where madvise is missing)."""
        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        for mapping in self.mappings:
            length = ctypes.c_size_t(mapping.end - mapping.start)
            if libc.madvise(ctypes.c_void_p(mapping.start), length, MADV_DONTNEED) != 0:
                _LOGGER.debug("madvise on %s failed: errno %d", mapping.path, ctypes.get_errno())


def release_checkpoint_pages() -> int:
    """Drop the resident pages of every unmodified checkpoint mapping; return the kB released."""
    pages = CheckpointPages()
    pages.release()
    return sum(mapping.resident_kb for mapping in pages.mappings)  # none without /proc

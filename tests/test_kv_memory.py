"""A talker cache is sized for the worst case (prompt + frame cap) but costs memory only as it fills.

Each utterance owns one cache; with 28 layers of 8 key/value heads of 128 floats (the real 0.6B talker),
a cap of 3,000 positions would be 688 MB if it were resident. torch.empty reserves address space and the
kernel commits pages only when the loop writes a position, so what a live utterance holds is what it
has spoken: measured here as resident memory, on the real dimensions.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

from benchmarks.benchmark import process_memory_gb
from wyoming_qwen3tts.engine.pytorch.steps import DecoderStack

REAL_TALKER = SimpleNamespace(
    kv_heads=8, head_dim=128, layers=[None] * 28, dtype=torch.float32, cos=torch.empty(8192, 1)
)


def resident_mb() -> float:
    return process_memory_gb(os.getpid()) * 1024


def test_a_worst_case_talker_cache_is_resident_only_where_written():
    before = resident_mb()
    cache = DecoderStack.new_cache(REAL_TALKER, 3000)  # type: ignore[arg-type]
    allocated = resident_mb() - before
    for tensor in (*cache.keys, *cache.values):
        tensor[:, :, :100].zero_()  # a sentence of about 100 positions (prompt and 8 s of speech)
    used = resident_mb() - before
    needed = 2 * 28 * 8 * 100 * 128 * 4 / 2**20  # 22 MB
    print(f"allocated +{allocated:.0f} MB, after 100 positions +{used:.0f} MB (needed {needed:.0f} MB)")
    assert allocated < 20  # not the 688 MB of the whole reservation
    assert used < needed + 40

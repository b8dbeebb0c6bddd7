"""The rotary tables the PyTorch steps read: built from qwen-tts's own rotary modules, on any machine load.

The talker's multimodal RoPE gives three rows that must agree for equal positions. Which elements the
vectorised and the scalar cos/sin kernels compute depends on how torch splits the work across threads,
so on a busy machine the rows can differ in the last bit: that must not stop the server from starting.
The first cos of a new process could be wrong on one thread (far more than a last bit): every thread
takes one first.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

from wyoming_qwen3tts.engine.pytorch.steps import _rotary_table
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts


class RowsRotary:
    """A stand-in for a rotary module whose rows are given (a unit test of the check alone)."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.cos, self.sin = cos, sin

    def __call__(self, probe, position_ids):
        return self.cos.to(probe.dtype), self.sin.to(probe.dtype)


def table_rows(positions: int, rows: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.arange(positions, dtype=torch.float32)[:, None] * torch.tensor([1.0, 0.1, 0.01, 0.001])
    per_row = torch.stack([angles + (shift if row else 0.0) for row in range(rows)])[:, None]
    return per_row.cos(), per_row.sin()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_a_last_bit_apart_are_one_table(dtype):
    cos, sin = table_rows(64, 3)
    # The last row rounded one unit in the last place differently, as the scalar tail kernel may.
    cos[-1] = torch.nextafter(cos[-1], torch.full_like(cos[-1], 2.0))
    got_cos, got_sin = _rotary_table(RowsRotary(cos, sin), 64, dtype, rows=3)
    assert got_cos.dtype == dtype and got_cos.shape == (64, 4)
    assert torch.equal(got_cos, cos[0, 0].to(dtype)) and torch.equal(got_sin, sin[0, 0].to(dtype))


def test_rows_for_other_positions_are_refused():
    cos, sin = table_rows(64, 3, shift=0.5)  # not the same positions: a real difference
    with pytest.raises(RuntimeError, match="sections differ"):
        _rotary_table(RowsRotary(cos, sin), 64, torch.float32, rows=3)


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_the_talker_table_builds_on_a_loaded_machine(tiny_models):
    """The real talker rotary module, its full 8,192-position table, 30 times with both cores busy."""
    model = import_qwen_tts().Qwen3TTSModel.from_pretrained(
        str(tiny_models["custom_voice"]), dtype=torch.float32
    )
    rotary = model.model.talker.model.rotary_emb
    saved = torch.get_num_threads()
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=_spin, args=(120.0,), daemon=True) for _ in range(2)]
    for spinner in spinners:
        spinner.start()
    try:
        torch.set_num_threads(2)
        tables = [_rotary_table(rotary, 8192, torch.float32, rows=3) for _ in range(30)]
    finally:
        torch.set_num_threads(saved)
        for spinner in spinners:
            spinner.terminate()
    first_cos, first_sin = tables[0]
    assert first_cos.shape == (8192, rotary.inv_freq.shape[0] * 2)
    for cos, sin in tables[1:]:
        assert torch.allclose(cos, first_cos, rtol=0, atol=1e-6) and torch.allclose(
            sin, first_sin, rtol=0, atol=1e-6
        )


FIRST_TABLE = """
import sys, torch
from wyoming_qwen3tts.engine.pytorch.steps import _rotary_table
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts
model = import_qwen_tts().Qwen3TTSModel.from_pretrained(sys.argv[1], dtype=torch.float32)
rotary = model.model.talker.model.rotary_emb
torch.set_num_threads(2)
cos, sin = _rotary_table(rotary, 8192, torch.float32, rows=3)
angles = torch.arange(8192, dtype=torch.float32)[:, None] * rotary.inv_freq.float()[None, :]
angles = torch.cat((angles, angles), dim=-1).double()
print(max((cos.double() - angles.cos()).abs().max().item(), (sin.double() - angles.sin()).abs().max().item()))
"""


def test_the_first_table_of_a_process_is_exact(tiny_models):
    """The table built as a new process's first cos and sin, on two threads (as a server starts): on an
    AMX Xeon the first cos of a process came out up to 1.5e-4 off in the rows of one thread, in 5 of 22
    benchmark rows one hour and 1 start of 20 the next, until every thread took a cos and a sin first.
    Within float32 rounding of the exact values, in several new processes."""
    import subprocess
    import sys

    for _ in range(4):
        done = subprocess.run(
            [sys.executable, "-c", FIRST_TABLE, str(tiny_models["custom_voice"])],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert float(done.stdout.strip().splitlines()[-1]) < 1e-6

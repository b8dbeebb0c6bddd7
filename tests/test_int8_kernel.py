"""Our int8 product (engine/pytorch/int8_kernel.cpp), built by script/setup as the engine uses it.

Every instruction-set path this CPU has gives the same bits as the plain C++ one, and those bits are the
exact integer product of the per-row quantized input with the int8 weights, scaled back; a row's result
is the same alone and in any batch; the layer agrees with the float one; a missing compiler or a failed
build says why, and the layers fall back to FBGEMM's.
"""

from __future__ import annotations

import pytest
import torch

from wyoming_qwen3tts.engine.pytorch import int8_kernel, quantize
from wyoming_qwen3tts.engine.pytorch.quantize import PackedInt8Linear, _per_channel_int8

# (outputs, inputs): the model's shapes and ones that leave a partial group of channels and inputs
SHAPES = [(64, 64), (1024, 1024), (4096, 1024), (1024, 3072), (70, 33), (3, 5), (2048, 1026)]


@pytest.fixture(autouse=True)
def every_path_restored():
    int8_kernel.load()
    best = int8_kernel.isa()
    yield
    int8_kernel.set_isa(best)


def packed_of(weight: torch.Tensor):
    qweight, scale = _per_channel_int8(weight)
    packed, correction = int8_kernel.pack(qweight)
    return qweight, scale, packed, correction


def run(x, packed, scale, correction, bias, n):
    return torch.ops.qwen3tts.int8_linear(x, packed, scale, correction, bias, n)


def exact(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The product as int8_kernel.cpp defines it, computed with torch: the integer sums in int64."""
    peak = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
    q = torch.round(x * (torch.tensor(127.0) / peak)).to(torch.int64)
    sums = (q @ qweight.to(torch.int64).T).to(torch.int32)
    out = sums.float() * ((peak / 127.0) * scale)
    return out if bias is None else out + bias


def paths() -> list[str]:
    """Every path up to this CPU's, plain C++ first (set_isa runs the best one at or below each that
    the CPU has: all of them on an AMX Xeon)."""
    return list(int8_kernel.ISAS[: int8_kernel.ISAS.index(int8_kernel.isa()) + 1])


@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_every_path_gives_the_exact_product(n, k):
    torch.manual_seed(n * 7 + k)
    weight = torch.randn(n, k) * 0.05
    bias = torch.randn(n)
    qweight, scale, packed, correction = packed_of(weight)
    for rows in (1, 2, 3, 5, 9):
        x = torch.randn(rows, k) * 3
        want = exact(x, qweight, scale, bias)
        for path in paths():
            int8_kernel.set_isa(path)
            got = run(x, packed, scale, correction, bias, n)
            assert torch.equal(got, want), (path, rows)
        no_bias = run(x, packed, scale, correction, None, n)
        assert torch.equal(no_bias, exact(x, qweight, scale, None))


def test_a_row_is_the_same_alone_and_in_any_batch():
    torch.manual_seed(1)
    weight = torch.randn(1024, 1024) * 0.03
    _, scale, packed, correction = packed_of(weight)
    x = torch.randn(16, 1024)
    x[3] *= 1000  # one loud row: with one scale for the batch the others would lose their precision
    alone = torch.cat([run(x[i : i + 1], packed, scale, correction, None, 1024) for i in range(16)])
    for rows in (2, 4, 5, 16):
        together = torch.cat(
            [run(x[i : i + rows], packed, scale, correction, None, 1024) for i in range(0, 16, rows)]
        )
        assert torch.equal(together, alone[: together.shape[0]])


def test_the_layer_agrees_with_the_float_one_in_any_shape_and_dtype():
    torch.manual_seed(2)
    linear = torch.nn.Linear(96, 80)
    layer = PackedInt8Linear(linear)
    for x in (torch.randn(3, 96), torch.randn(2, 4, 96), torch.randn(1, 1, 96)):
        got, want = layer(x), linear(x)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999
    bf16 = layer(torch.randn(1, 1, 96, dtype=torch.bfloat16))
    assert bf16.dtype == torch.bfloat16 and bf16.shape == (1, 1, 80)


def test_the_packed_kernel_comes_first_where_it_builds():
    assert quantize.available_kernels()[0] == "packed"


def test_the_path_follows_the_cpu_flags():
    amx_xeon = "avx2 fma avx512f avx512bw avx512vl avx512_vnni avx_vnni amx_int8"
    assert int8_kernel.isa_of(frozenset(amx_xeon.split())) == "avx512-vnni"
    zen4 = "avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16"  # no AVX-VNNI
    assert int8_kernel.isa_of(frozenset(zen4.split())) == "avx512-vnni"
    assert int8_kernel.isa_of(frozenset("avx2 fma avx_vnni".split())) == "avx-vnni"  # i5-1240P, N100
    assert int8_kernel.isa_of(frozenset("avx2 fma".split())) == "avx2"
    assert int8_kernel.isa_of(frozenset("sse4_2".split())) == "scalar"

"""engine/codec_kernels.py: each CPU layer gives the values of the module it replaces (float32 rounding).

The whole-graph check runs the tiny random decoder of test_decoder.py through CodecGraph with and without
cpu_kernels, in uneven chunks; the layer checks use the real codec's channel counts at chunk lengths that
take each path (the transposed product, im2col, oneDNN, one product per tap).
"""

from __future__ import annotations

import pytest
import torch
from test_decoder import CHUNKS, FRAMES, random_codes, random_decoder
from torch import nn

from wyoming_qwen3tts.engine import codec_kernels as kernels
from wyoming_qwen3tts.engine.codec import CodecGraph, TorchCodec, _polyphase_weights, _run_polyphase

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


class _Snake(nn.Module):
    """Upstream SnakeBeta's parameters and forward (qwen_tts's modeling file), on random parameters."""

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.alpha = nn.Parameter(0.3 * torch.randn(channels, generator=gen))
        self.beta = nn.Parameter(0.3 * torch.randn(channels, generator=gen))
        self.no_div_by_zero = 0.000000001

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(self.alpha.unsqueeze(0).unsqueeze(-1))
        beta = torch.exp(self.beta.unsqueeze(0).unsqueeze(-1))
        return x + (1.0 / (beta + self.no_div_by_zero)) * torch.pow(torch.sin(x * alpha), 2)


def _truth(act: _Snake, x: torch.Tensor) -> torch.Tensor:
    """SnakeBeta of x in float64 (x as given, e.g. already rounded to bfloat16)."""
    alpha = act.alpha.detach().double().exp()[:, None]
    beta = act.beta.detach().double().exp()[:, None]
    return x.double() + torch.sin(x.double() * alpha) ** 2 / (beta + act.no_div_by_zero)


def _paths() -> list[str]:
    """The fused activation's paths this CPU runs, lowest first."""
    assert kernels.fused_snake(), "script/setup builds the fused activation (engine/native.py)"
    best = kernels.set_snake_isa("avx512")
    kernels.set_snake_isa(best)
    return list(kernels.SNAKE_ISAS[: kernels.SNAKE_ISAS.index(best) + 1])


@torch.inference_mode()
def test_the_unfused_snake_is_upstream_snakebeta_bit_for_bit():
    act = _Snake(96, seed=1)
    x = torch.randn(1, 96, 500)
    assert torch.equal(kernels.Snake(act, fused=False)(x), act(x))  # the same operations in the same order


@torch.inference_mode()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_snake_writes_into_a_padded_buffer_and_leaves_x(dtype):
    act = _Snake(96, seed=1)
    x = torch.randn(2, 96, 500).to(dtype)
    kept = x.clone()
    snake = kernels.Snake(act)
    assert snake.fused
    alone = snake(x)
    padded = torch.full((2, 96, 506), 7.0, dtype=dtype)
    snake(x, out=padded[..., 6:])
    assert torch.equal(padded[..., 6:], alone) and bool((padded[..., :6] == 7).all())
    assert torch.equal(x, kept)


@torch.inference_mode()
def test_the_fused_snake_is_snakebeta_to_float32_rounding():
    act = _Snake(96, seed=2)
    x = 4 * torch.randn(1, 96, 1001)
    fused = kernels.Snake(act)(x)
    truth = _truth(act, x)
    upstream = act(x)
    assert (fused.double() - truth).abs().max() <= 2 * (upstream.double() - truth).abs().max() + 1e-6
    assert close(fused, upstream)


@torch.inference_mode()
def test_the_fused_snake_in_bfloat16_rounds_once():
    """From bfloat16 samples, within one bfloat16 step of the exact result, where the upstream module's five
    bfloat16 operations stray several."""
    act = _Snake(96, seed=3).to(torch.bfloat16)
    x = (2 * torch.randn(1, 96, 1001)).to(torch.bfloat16)
    fused = kernels.Snake(act)(x)
    assert fused.dtype == torch.bfloat16
    truth = _truth(act, x)
    step = truth.abs().clamp(min=2**-20) * 2**-7  # a bfloat16 step (8 significant bits) at each value
    assert bool(((fused.double() - truth).abs() <= step).all())
    rounded = truth.to(torch.bfloat16)  # the exact result, rounded once
    assert (fused == rounded).float().mean() > 0.99 > 0.9 > (act(x) == rounded).float().mean()


@torch.inference_mode()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_path_of_the_fused_snake_gives_the_same_bits(dtype):
    """Lengths with tails past the vector width; samples beyond the polynomial's range, infinite, NaN."""
    act = _Snake(24, seed=4)
    x = 3 * torch.randn(1, 24, 37)
    x[0, 0, :6] = torch.tensor([1e4, -3e5, float("inf"), float("-inf"), float("nan"), 0.0])
    x[0, 1, 17] = 2e6
    x = x.to(dtype)
    snake = kernels.Snake(act)
    best = kernels.set_snake_isa("avx512")
    try:
        results = {}
        for path in _paths():
            kernels.set_snake_isa(path)
            results[path] = snake(x)
    finally:
        kernels.set_snake_isa(best)
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32  # NaN too compared bit for bit
    first = results["scalar"]
    for path, out in results.items():
        assert torch.equal(out.view(bits), first.view(bits)), path
    truth = _truth(act, x)
    finite = truth.isfinite()
    assert bool(torch.isnan(first[~finite & truth.isnan()]).all())
    assert bool((first.double()[finite] - truth[finite]).abs().le(truth[finite].abs() * 2**-7 + 1e-6).all())


def test_the_fused_snake_path_follows_the_cpu_flags():
    assert kernels.snake_isa_of(frozenset("avx2 fma avx512f avx512dq avx512bw avx512vl".split())) == "avx512"
    assert kernels.snake_isa_of(frozenset("avx2 fma avx_vnni".split())) == "avx2"  # i5-1240P, N100
    assert kernels.snake_isa_of(frozenset("sse4_2".split())) == "scalar"


def test_without_the_operator_the_codec_runs_the_upstream_operations(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "loaded", lambda source: kernels.KernelUnavailable("no C++ compiler (g++)"))
    kernels.fused_snake.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            assert not kernels.Snake(_Snake(8, seed=5)).fused
        assert "no C++ compiler (g++); the codec's activations run as PyTorch operations" in caplog.text
    finally:
        kernels.fused_snake.cache_clear()


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "dilation", "length"),
    [
        (1024, 1536, 7, 1, 4),  # the first conv, one frame: transposed product
        (512, 1024, 3, 1, 1),  # the pre-conv
        (768, 768, 7, 9, 96),  # a wide unit conv of three frames: im2col
        (96, 96, 7, 3, 1920),  # a narrow, long unit conv: left to oneDNN by fits(), still right here
        (96, 96, 1, 1, 1920),  # 1x1
        (96, 1, 7, 1, 1920),  # the output conv: one product per tap
    ],
)
@torch.inference_mode()
def test_gemm_conv_is_conv1d(c_in, c_out, kernel, dilation, length):
    torch.manual_seed(3)
    conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)
    gemm = kernels.GemmConv(conv)
    x = torch.randn(1, c_in, (kernel - 1) * dilation + length)
    out = gemm(x)
    assert out.shape == (1, c_out, length) and out.is_contiguous()
    assert close(out, conv(x))
    if kernel == 1:
        residual = torch.randn(1, c_out, length)
        expected = conv(x) + residual
        assert close(gemm(x, residual=residual.clone()), expected)
    strided = torch.randn(1, c_in, x.shape[-1] + 5)[..., 5:]  # a view into a padded buffer
    strided.copy_(x)
    assert close(gemm(strided), conv(x))


def test_gemm_conv_fits_the_convs_onednn_runs_slower():
    wide = kernels.GemmConv(nn.Conv1d(1024, 1536, 7))
    narrow = kernels.GemmConv(nn.Conv1d(96, 96, 7))
    assert wide.fits(32) and not narrow.fits(15360)
    assert kernels.GemmConv(nn.Conv1d(96, 96, 1)).fits(15360)
    assert kernels.GemmConv(nn.Conv1d(96, 1, 7)).fits(15360)


@pytest.mark.parametrize(("kernel", "stride", "length"), [(16, 8, 4), (10, 5, 33), (2, 2, 8)])
@torch.inference_mode()
def test_polyphase_is_the_plain_polyphase(kernel, stride, length):
    torch.manual_seed(4)
    conv = nn.ConvTranspose1d(48, 24, kernel, stride=stride)
    weights = _polyphase_weights(conv)
    x = torch.randn(1, 48, length + (1 if kernel == 2 * stride else 0))
    assert close(kernels.polyphase(x, *weights), _run_polyphase(x, *weights))


def _decoded_in_chunks(graph: CodecGraph, codes: torch.Tensor) -> torch.Tensor:
    state, pieces, start = graph.zero_state(), [], 0
    for size in CHUNKS:
        frames = torch.tensor(start)
        wav, *state = graph(codes[..., start : start + size], frames, *state)
        pieces.append(wav)
        start += size
    return torch.cat(pieces)


@torch.inference_mode()
@pytest.mark.parametrize("options", [{"cpu_kernels": True}, {"pointwise_products": True}])
def test_graph_with_cpu_kernels_equals_the_plain_graph(options):
    decoder = random_decoder()
    codes = random_codes(FRAMES)
    plain = _decoded_in_chunks(CodecGraph(decoder), codes)
    fast = _decoded_in_chunks(CodecGraph(decoder, **options), codes)
    assert plain.std() > 0.05
    assert (fast - plain).abs().max() < 1e-5


def test_torch_codec_uses_the_kernels_in_float32_and_the_pointwise_products_always():
    assert TorchCodec(random_decoder()).graph._kernels
    graph = TorchCodec(random_decoder().to(torch.bfloat16)).graph
    assert not graph._kernels
    kernel_sizes = {gemm.kernel for gemm in graph._gemms.values()}
    assert kernel_sizes == {1}, "in bfloat16 only the 1x1 convs run as matrix products"


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("kernel", [3, 6])
def test_polyphase_gives_samples_channels_first(rows, kernel):
    """Its output in the layout of the convs' (a time-major view made every later op slower)."""
    weights = _polyphase_weights(nn.ConvTranspose1d(16, 8, kernel, stride=3))
    x = torch.randn(rows, 16, 5 + (1 if kernel == 6 else 0))
    for out in (kernels.polyphase(x, *weights), _run_polyphase(x, *weights)):
        assert out.shape == (rows, 8, 15)
        assert out.is_contiguous()


@torch.inference_mode()
def test_pointwise_products_of_several_streams_give_each_its_own_bits():
    """In bfloat16 each stream's 1x1 product is the one it gets alone: a stream's audio must not depend on
    who else was decoded with it. (One product over all streams' steps is equal here, but through the
    server on an AMX CPU it changed a bfloat16 stream's samples: test_server_limits' 32 streams caught it.)"""
    conv = nn.Conv1d(96, 96, 1).to(torch.bfloat16)
    x = torch.randn(3, 96, 40).to(torch.bfloat16)
    separate, joined = kernels.GemmConv(conv, together=False), kernels.GemmConv(conv)
    alone = torch.cat([separate(x[row : row + 1]) for row in range(3)])
    assert torch.equal(separate(x), alone)
    assert close(joined(x).float(), alone.float(), rel=2e-2)  # the joined product: equal up to rounding
    graph = TorchCodec(random_decoder().to(torch.bfloat16)).graph
    assert not any(gemm.together for gemm in graph._gemms.values())

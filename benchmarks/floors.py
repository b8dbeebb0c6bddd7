"""What this machine allows each part of a frame, to set its measured time against (issue 19's floors).

The talker and the code predictor are one-token steps: every step reads every weight, so their floor is
the bytes they read a frame (the talker once, the predictor fifteen times, one head a step) over the
read bandwidth measured here with the benchmark's threads. The predictor reads the same layers fifteen
times a frame: where they fit in a cache (a CPU with a large L3), all but the first of those reads are
bounded by that cache's bandwidth, measured here on a buffer of their size read again and again. The
codec is compute-bound: its floor is its floating-point work a frame over the matrix-product peak
measured here in the dtype it runs in.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

BANDWIDTH_BYTES = 1 << 30  # 1 GiB: far beyond any cache
PEAK_SIZE = 2048  # square matrix product for the compute peak
MAX_READS = 4096  # a small buffer's reads a timing (a tiny model's layers would otherwise take thousands)


def read_bandwidth_gbs(size: int = BANDWIDTH_BYTES, repeats: int = 3) -> float:
    """GB/s of reading `size` bytes of float32 (a sum) with torch's current thread count, best of repeats.
    1 GiB is beyond any cache; a smaller buffer is read again and again (about 1 GiB a timing), so it is
    read from whatever cache holds it."""
    data = torch.ones(max(1, size // 4))
    data.sum()
    reads = max(1, min(BANDWIDTH_BYTES // size, MAX_READS))

    def read() -> None:
        for _ in range(reads):
            data.sum()

    best = min(_timed(read) for _ in range(repeats))
    return reads * data.numel() * 4 / best / 1e9


def matmul_gflops(dtype: torch.dtype, repeats: int = 3) -> float:
    """GFLOP/s of a 2048^3 matrix product in dtype with torch's current thread count, best of repeats."""
    a = torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * PEAK_SIZE**3 / best / 1e9


def _timed(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def linear_bytes(layer: nn.Module) -> int:
    """The bytes one call of a linear layer reads: its weights (and scales, bias) in the format it holds."""
    from wyoming_qwen3tts.engine.pytorch.quantize import DynamicInt8Linear

    if isinstance(layer, DynamicInt8Linear):
        weight = layer.out_features * (layer.in_features + 2) + 4 * layer.out_features  # int8 + f32 scales
        return weight + (0 if layer.bias is None else 4 * layer.out_features)
    # Others (nn.Linear, weight-only int8, IPEX's packed linears) hold what they read as tensors: as
    # parameters and buffers, or (IPEX's weight-only int8) as a plain `weight` attribute.
    held = sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()] if t is not None)
    weight = getattr(layer, "weight", None)
    if not held and isinstance(weight, torch.Tensor):
        held = weight.numel() * weight.element_size()
    if not held:
        raise TypeError(f"no byte count for {type(layer).__name__}")
    return held


def _stack_bytes(stack: Any) -> int:
    return sum(
        linear_bytes(layer.qkv)
        + linear_bytes(layer.o)
        + linear_bytes(layer.gate_up)
        + linear_bytes(layer.down)
        for layer in stack.layers
    )


def part_bytes(steps: Any) -> dict[str, int]:
    """Bytes a frame reads of the talker (one step) and of the code predictor (its steps of a frame, each
    head once): PyTorch steps, or PyTorch's talker beside an OpenVINO predictor (engine/split_steps.py),
    whose weights are read off its export's .bin files (they hold them as the graphs read them, int4 with
    its scales)."""
    talker = getattr(steps, "talker_steps", steps)
    predictor = getattr(steps, "code_predictor", steps)
    groups = steps.layout.num_groups - 1
    if hasattr(predictor, "predictor_stack"):
        heads = sum(linear_bytes(head) for head in predictor.predictor_heads)  # each step reads one
        projection = predictor.to_predictor
        per_step = _stack_bytes(predictor.predictor_stack)
        per_step += 0 if isinstance(projection, nn.Identity) else linear_bytes(projection)
    else:
        export_dir = predictor.export_dir
        heads = sum(path.stat().st_size for path in export_dir.glob("predictor_head_*.bin"))
        per_step = (export_dir / "predictor.bin").stat().st_size
    return {
        "talker": _stack_bytes(talker.talker_stack) + linear_bytes(talker.codec_head),
        "predictor": groups * per_step + heads,
        "predictor_step": per_step,  # the layers every step of a frame reads again (not the heads)
        "predictor_groups": groups,
    }


def codec_gflop_per_frame(engine: Any, frames: int = 8) -> float:
    """The codec's floating-point work a frame, counted by torch over one decode of `frames` frames."""
    from torch.utils.flop_counter import FlopCounterMode

    decoder = engine._fresh_decoder.copy()
    codes = torch.zeros(frames, decoder.step.num_quantizers, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        decoder.decode(codes)
    return counter.get_total_flops() / frames / 1e9


def floors(engine: Any) -> dict[str, Any] | None:
    """Each part's floor in ms a frame on this machine, for an engine on the PyTorch steps; else None."""
    steps = engine.parts.steps
    if not hasattr(getattr(steps, "talker_steps", steps), "talker_stack"):  # PyTorch's talker only
        return None
    bandwidth = read_bandwidth_gbs()
    graph = getattr(engine.parts.codec, "graph", None)  # TorchCodec's CodecGraph
    codec_dtype = next(graph.parameters()).dtype if graph is not None else torch.float32
    peak = matmul_gflops(codec_dtype)
    read = part_bytes(steps)
    gflop = codec_gflop_per_frame(engine)
    # A frame's first predictor step finds its layers evicted by the talker's read; the other steps may
    # find them in a cache. Never below the memory's bandwidth (a tiny model's reads time their calls).
    cached = max(bandwidth, read_bandwidth_gbs(read["predictor_step"]))
    again = (read["predictor_groups"] - 1) * read["predictor_step"]
    return {
        "read_bandwidth_gbs": round(bandwidth, 1),
        "cached_read_gbs": round(cached, 1),
        "predictor_step_mb": round(read["predictor_step"] / 1e6, 1),
        "matmul_peak_gflops": round(peak, 1),
        "codec_dtype": str(codec_dtype).removeprefix("torch."),
        "talker_mb": round(read["talker"] / 1e6, 1),
        "predictor_mb": round(read["predictor"] / 1e6, 1),
        "codec_gflop": round(gflop, 2),
        "ms": {
            "talker step": read["talker"] / bandwidth / 1e6,
            "code predictor (15 steps)": ((read["predictor"] - again) / bandwidth + again / cached) / 1e6,
            "codec decode": gflop / peak * 1e3,
        },
    }

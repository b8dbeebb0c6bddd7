"""benchmarks/floors.py: the bytes each part of a frame reads and the codec's work, checked against the
model's own dimensions on the tiny model (the benchmark sets each part's measured time against them)."""

from __future__ import annotations

import json

import pytest

from benchmarks.floors import codec_gflop_per_frame, floors, part_bytes
from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def weights_per_frame(config: dict) -> tuple[int, int, int]:
    """Weights the talker reads a step, the code predictor a frame and the predictor's layers a step, from
    config.json's dimensions."""

    def layer(c: dict) -> int:
        h, hd, q, kv, i = (
            c[k]
            for k in (
                "hidden_size",
                "head_dim",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
            )
        )
        return h * (q + 2 * kv) * hd + q * hd * h + h * 2 * i + i * h

    talker = config["talker_config"]
    predictor = talker["code_predictor_config"]
    groups = talker["num_code_groups"] - 1
    projection = (
        0
        if predictor["hidden_size"] == talker["hidden_size"]
        else talker["hidden_size"] * predictor["hidden_size"]
    )
    talker_weights = (
        talker["num_hidden_layers"] * layer(talker) + talker["hidden_size"] * talker["vocab_size"]
    )
    step_weights = predictor["num_hidden_layers"] * layer(predictor) + projection
    predictor_weights = groups * step_weights
    predictor_weights += groups * predictor["hidden_size"] * predictor["vocab_size"]  # one head a step
    return talker_weights, predictor_weights, step_weights


@pytest.mark.parametrize(("quantize", "bytes_per_weight"), [("none", 4), ("int8", 1)])
def test_bytes_a_frame_reads_follow_the_model_dimensions(tiny_models, quantize, bytes_per_weight):
    model_dir = tiny_models["custom_voice"]
    engine = PyTorchEngine(
        model_dir, EngineOptions(warmup=False), TorchOptions(dtype="float32", quantize=quantize)
    )
    talker, predictor, step = weights_per_frame(json.loads((model_dir / "config.json").read_text()))
    read = part_bytes(engine.parts.steps)
    # int8 layers also read a float32 scale per output row and two zero columns (the per-row scale trick)
    slack = 0 if quantize == "none" else 0.2
    assert bytes_per_weight * talker <= read["talker"] <= bytes_per_weight * talker * (1 + slack)
    assert bytes_per_weight * predictor <= read["predictor"] <= bytes_per_weight * predictor * (1 + slack)
    assert bytes_per_weight * step <= read["predictor_step"] <= bytes_per_weight * step * (1 + slack)
    assert read["predictor_groups"] == 15


def test_floors_of_every_part(tiny_models):
    engine = PyTorchEngine(
        tiny_models["custom_voice"],
        EngineOptions(warmup=False),
        TorchOptions(dtype="float32", quantize="none"),
    )
    assert codec_gflop_per_frame(engine) > 0
    floor = floors(engine)
    assert floor is not None and floor["read_bandwidth_gbs"] > 0 and floor["matmul_peak_gflops"] > 0
    assert set(floor["ms"]) == {"talker step", "code predictor (15 steps)", "codec decode"}
    assert all(ms > 0 for ms in floor["ms"].values())


def test_the_predictor_floor_reads_its_layers_again_from_a_cache(tiny_models, monkeypatch):
    """All but the first of a frame's predictor steps read layers the step before read: where a buffer of
    their size reads faster than memory (a large L3), those reads are held to that speed, the rest (the
    first step, the heads) to the memory's."""
    import benchmarks.floors as floors_module

    engine = PyTorchEngine(
        tiny_models["custom_voice"],
        EngineOptions(warmup=False),
        TorchOptions(dtype="float32", quantize="none"),
    )
    read = part_bytes(engine.parts.steps)
    memory, cache = 10.0, 40.0  # GB/s
    monkeypatch.setattr(
        floors_module,
        "read_bandwidth_gbs",
        lambda size=floors_module.BANDWIDTH_BYTES: memory if size >= floors_module.BANDWIDTH_BYTES else cache,
    )
    monkeypatch.setattr(floors_module, "matmul_gflops", lambda dtype: 100.0)
    floor = floors(engine)
    again = 14 * read["predictor_step"]
    expected_ms = ((read["predictor"] - again) / memory + again / cache) / 1e6
    assert floor["ms"]["code predictor (15 steps)"] == pytest.approx(expected_ms)
    assert floor["ms"]["talker step"] == pytest.approx(read["talker"] / memory / 1e6)
    assert (floor["read_bandwidth_gbs"], floor["cached_read_gbs"]) == (memory, cache)
    # A cache slower than memory (a buffer too small to time) never lowers the floor below memory's.
    monkeypatch.setattr(
        floors_module,
        "read_bandwidth_gbs",
        lambda size=floors_module.BANDWIDTH_BYTES: memory if size >= floors_module.BANDWIDTH_BYTES else 1.0,
    )
    floor = floors(engine)
    assert floor["ms"]["code predictor (15 steps)"] == pytest.approx(read["predictor"] / memory / 1e6)


def test_an_openvino_predictor_reads_its_export_files_a_frame(tiny_models, tmp_path):
    """--predictor openvino-*: the talker's bytes as PyTorch's, the predictor's off the export's files
    (the step graph fifteen times, each head once), so the benchmark gives that row its floors too."""
    model_dir = tiny_models["custom_voice"]
    options = EngineOptions(warmup=False, data_dir=tmp_path)
    split = PyTorchEngine(
        model_dir, options, TorchOptions(dtype="float32", quantize="none", predictor="openvino-fp32")
    )
    plain = PyTorchEngine(model_dir, options, TorchOptions(dtype="float32", quantize="none"))
    read, expected = part_bytes(split.parts.steps), part_bytes(plain.parts.steps)
    assert read["talker"] == expected["talker"]
    # fp32 graphs hold the same float32 weights as the PyTorch layers, plus small constants (norms, RoPE)
    assert expected["predictor"] <= read["predictor"] <= 1.1 * expected["predictor"]
    assert expected["predictor_step"] <= read["predictor_step"] <= 1.1 * expected["predictor_step"]
    floor = floors(split)
    assert floor is not None and floor["ms"]["code predictor (15 steps)"] > 0


def test_a_linear_of_another_library_reads_the_tensors_it_holds():
    """IPEX swaps in its own linear classes; their bytes are the weights (and buffers) they hold."""
    import torch
    from torch import nn

    from benchmarks.floors import linear_bytes

    class Packed(nn.Module):  # a stand-in for a library's packed linear
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(48, 64, dtype=torch.bfloat16))
            self.register_buffer("scales", torch.zeros(48))

    class Attribute(nn.Module):  # IPEX's weight-only int8 linear keeps its weight as a plain attribute
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.zeros(64, 64, dtype=torch.int8)

    assert linear_bytes(Packed()) == 48 * 64 * 2 + 48 * 4
    assert linear_bytes(Attribute()) == 64 * 64
    assert linear_bytes(nn.Linear(64, 48)) == (48 * 64 + 48) * 4
    with pytest.raises(TypeError):
        linear_bytes(nn.Identity())  # nothing held: no byte count, not a floor of zero

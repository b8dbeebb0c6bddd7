"""The OpenVINO backend's steps and tables: compiled talker and predictor graphs, memory-mapped embeddings.

Each utterance owns an infer request of the talker graph: its KV cache is that
request's OpenVINO state, so utterances at different positions interleave step
by step. The code predictor's keys and values are explicit inputs instead (a
frame's are small): the utterances in flight stand at the same predictor
position, so one call computes all their rows (continuous batching). Tensors
cross the step seam as torch tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from ..prompt import StoredEmbeddingTables
from ..seams import CodeLayout, predictor_row_by_row, prompts_one_by_one, talker_row_by_row
from ..split_steps import SplitSteps

TALKER = "talker.xml"
PREDICTOR = "predictor.xml"
HEADS = "predictor_head_*.xml"


# --dtype -> the CPU plugin's INFERENCE_PRECISION_HINT. "auto" is f32 on every CPU: left unset, the CPU
# plugin computes in bf16 wherever the CPU has native bf16 (AVX512-BF16, AMX), which made an fp32 export
# differ from the PyTorch engine (19 dB SNR on the tiny codec) and, for one fp16 codec export, crashed
# the compile with SIGFPE; and bf16 measured no faster than f32 on an AVX512-BF16 CPU (docs/backends.md).
PRECISION_HINTS = {"auto": "f32", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def inference_precision(dtype: str) -> str:
    """The inference precision hint for --dtype (the same on every CPU: see PRECISION_HINTS)."""
    return PRECISION_HINTS[dtype]


def compile_config(device: str, threads: int, precision: str = "f32") -> dict[str, Any]:
    """Compile properties: one stream tuned for latency; on the CPU our thread count and the precision.

    The precision is always set: OpenVINO's own default depends on the CPU (see PRECISION_HINTS).
    """
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if device.upper() == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
        config["INFERENCE_PRECISION_HINT"] = precision
    return config


def compiled_precision(compiled: ov.CompiledModel) -> str:
    """The precision a compiled model really computes in ("f32", "bf16", ...), as OpenVINO reports it.

    A CPU without native bf16 or f16 computes in f32 whatever was asked for.
    """
    try:
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    except RuntimeError:  # a device without the property
        return "unknown"
    return precision.to_string() if isinstance(precision, ov.Type) else str(precision)


def exported_tables(export_dir: Path) -> StoredEmbeddingTables:
    """The export's embedding tables, memory-mapped: only the rows a prompt uses become resident."""

    def load(name: str) -> torch.Tensor:
        # Copy-on-write mapping: torch wants a writable array; nothing ever writes to it.
        return torch.from_numpy(np.load(export_dir / "tables" / name, mmap_mode="c"))

    predictor = load("predictor_codec.npy")
    return StoredEmbeddingTables(load("text.npy"), load("codec.npy"), list(predictor))


class OpenVINOPredictor:
    """The exported code predictor and its heads, compiled for one device: the predictor half of the
    step interface (ModelSteps), served alone beside the PyTorch talker (engine/split_steps.py) or in
    OpenVINOSteps."""

    def __init__(
        self, export_dir: Path, core: ov.Core, device: str, config: dict[str, Any], layout: CodeLayout
    ) -> None:
        self.layout = layout
        self.export_dir = export_dir
        self._predictor = core.compile_model(export_dir / PREDICTOR, device, config)
        # An export whose predictor takes its keys and values as inputs batches its rows (see above);
        # an older one keeps them as state and runs one row a call.
        self._predictor_kv: list[tuple[str, str, tuple[int, int]]] = []
        for port in self._predictor.inputs:
            name = port.get_any_name()
            if name.startswith("past_"):
                shape = port.get_partial_shape()
                kv_shape = (shape[1].get_length(), shape[3].get_length())
                self._predictor_kv.append((name, name.replace("past_", "present_", 1), kv_shape))
        self.predictor_batches = bool(self._predictor_kv)
        if self.predictor_batches:
            self._predictor_request = self._predictor.create_infer_request()
        heads = sorted(export_dir.glob(HEADS))
        if len(heads) != layout.num_groups - 1:
            raise ValueError(
                f"{export_dir} has {len(heads)} predictor heads, the model {layout.num_groups - 1}"
            )
        # Heads hold no state: one request each serves every utterance.
        self._heads = [core.compile_model(path, device, config).create_infer_request() for path in heads]

    def new_predictor_cache(self) -> Any:
        if self.predictor_batches:
            return self.new_predictor_rows(1)
        return self._predictor.create_infer_request()

    def predictor(self, embeds: torch.Tensor, start: int, cache: Any, group: int) -> torch.Tensor:
        if self.predictor_batches:
            return self.predictor_rows(embeds, start, cache, group)[0]
        if start == 0:
            cache.reset_state()
        cache.infer({"embeds": embeds.float().numpy()}, share_inputs=True)
        head = self._heads[group]
        head.infer({"hidden": cache.get_tensor("hidden").data[0]}, share_inputs=True)
        return torch.from_numpy(head.get_tensor("logits").data[0].copy())

    def new_predictor_rows(self, rows: int) -> Any:
        if not self.predictor_batches:
            return [self.new_predictor_cache() for _ in range(rows)]
        return PredictorRows(self._predictor_request, self._predictor_kv, rows)

    def predictor_rows(self, embeds: torch.Tensor, start: int, cache: Any, group: int) -> torch.Tensor:
        if not self.predictor_batches:
            return predictor_row_by_row(self.predictor, embeds, start, cache, group)
        hidden = cache.step(embeds.float().numpy(), start)
        head = self._heads[group]
        head.infer({"hidden": hidden[:, 0]}, share_inputs=True)
        return torch.from_numpy(head.get_tensor("logits").data.copy())


class OpenVINOTalker:
    """The exported talker, compiled for one device: each sentence's infer request holds its KV state."""

    def __init__(self, talker: ov.CompiledModel, layout: CodeLayout) -> None:
        self.layout = layout
        self._talker = talker
        self.precision = compiled_precision(talker)  # what the steps really compute in

    def new_talker_cache(self, max_len: int) -> ov.InferRequest:
        if max_len > self.layout.max_positions:
            raise ValueError(f"{max_len} positions exceed the rotary table of {self.layout.max_positions}")
        return self._talker.create_infer_request()

    def talker(
        self, embeds: torch.Tensor, start: int, cache: ov.InferRequest
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if start == 0:
            cache.reset_state()
        cache.infer({"embeds": embeds.float().numpy()}, share_inputs=True)
        logits = torch.from_numpy(cache.get_tensor("logits").data[0].copy())
        hidden = torch.from_numpy(cache.get_tensor("hidden").data.copy())
        return logits, hidden

    def talker_rows(
        self, embeds: torch.Tensor, starts: list[int], caches: list[ov.InferRequest]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Rows at different positions cannot share a stateful request (docs/backends.md): one by one.
        return talker_row_by_row(self.talker, embeds, starts, caches)

    def talker_prompts(
        self, prompts: list[torch.Tensor], caches: list[ov.InferRequest], shared: list[int] | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # A stateful request's keys and values cannot be set from outside: every prompt runs whole.
        return prompts_one_by_one(self.talker, prompts, caches)


class OpenVINOSteps(SplitSteps):
    """The exported talker and code predictor, compiled for one device."""

    def __init__(
        self, export_dir: Path, core: ov.Core, device: str, config: dict[str, Any], layout: CodeLayout
    ) -> None:
        talker = OpenVINOTalker(core.compile_model(export_dir / TALKER, device, config), layout)
        predictor = OpenVINOPredictor(export_dir, core, device, config, layout)
        super().__init__(talker, predictor)
        self.predictor_batches = predictor.predictor_batches
        self.precision = talker.precision


class PredictorRows:
    """One frame of the code predictor for B rows: their keys and values, carried from step to step.

    The rows start a frame together and stand at the same position, so each step is one call for all.
    """

    def __init__(self, request: ov.InferRequest, kv: list[tuple[str, str, tuple[int, int]]], rows: int):
        self._request = request
        self._kv = kv  # (input, output, (kv heads, head dim)) of each layer's keys and values
        self._past = {name: np.zeros((rows, shape[0], 0, shape[1]), np.float32) for name, _, shape in kv}
        self._length = 0

    def step(self, embeds: np.ndarray, start: int) -> np.ndarray:
        """Run embeds [B, n, H] at positions start..; return the hidden states [B, 1, H] (a copy)."""
        if start != self._length:
            raise ValueError(f"predictor step at {start}, but its cache holds {self._length} positions")
        request = self._request
        request.infer({"embeds": embeds, **self._past}, share_inputs=True)
        # The next call reuses the output buffers: keep copies.
        self._past = {name: request.get_tensor(output).data.copy() for name, output, _ in self._kv}
        self._length += embeds.shape[1]
        return request.get_tensor("hidden").data.copy()

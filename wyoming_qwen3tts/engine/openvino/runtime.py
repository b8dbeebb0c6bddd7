"""The OpenVINO backend's steps and tables: compiled talker and predictor graphs, memory-mapped embeddings.

Each utterance owns an infer request of the talker graph: its KV cache is that
request's OpenVINO state, so utterances interleave step by step as they do on
the PyTorch backend. Tensors cross the step seam as torch tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from ..prompt import StoredEmbeddingTables
from ..seams import CodeLayout, ModelSteps

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


class OpenVINOSteps(ModelSteps):
    """The exported talker and code predictor, compiled for one device."""

    def __init__(
        self, export_dir: Path, core: ov.Core, device: str, config: dict[str, Any], layout: CodeLayout
    ) -> None:
        self.layout = layout
        self._talker = core.compile_model(export_dir / TALKER, device, config)
        self._predictor = core.compile_model(export_dir / PREDICTOR, device, config)
        heads = sorted(export_dir.glob(HEADS))
        if len(heads) != layout.num_groups - 1:
            raise ValueError(
                f"{export_dir} has {len(heads)} predictor heads, the model {layout.num_groups - 1}"
            )
        # Heads hold no state: one request each serves every utterance.
        self._heads = [core.compile_model(path, device, config).create_infer_request() for path in heads]
        self.precision = compiled_precision(self._talker)  # what the steps really compute in

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

    def new_predictor_cache(self) -> ov.InferRequest:
        return self._predictor.create_infer_request()

    def predictor(self, embeds: torch.Tensor, start: int, cache: ov.InferRequest, group: int) -> torch.Tensor:
        if start == 0:
            cache.reset_state()
        cache.infer({"embeds": embeds.float().numpy()}, share_inputs=True)
        head = self._heads[group]
        head.infer({"hidden": cache.get_tensor("hidden").data[0]}, share_inputs=True)
        return torch.from_numpy(head.get_tensor("logits").data[0].copy())

"""The openvino backend's own options and flags: which device, which export, which compile cache.

Import-light (no openvino): settings.py reads the flags here before any backend is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...flags import Flag, FlagGroup, choice, optional_path
from ..options import DTYPE

OV_WEIGHTS = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class OpenVINOOptions:
    """Where the export comes from and how OpenVINO compiles and runs it."""

    device: str = "CPU"  # CPU, GPU or AUTO
    weights: str = "int8"  # weight format of an export made on first start
    model_dir: Path | None = None  # an export made beforehand; None: made in --data-dir on first start
    cache_dir: Path | None = None  # OpenVINO's compiled-model cache; None: compile at every start
    dtype: str = "auto"  # the inference precision (runtime.PRECISION_HINTS); auto: f32 on every CPU


OPENVINO_FLAGS = FlagGroup(
    "openvino",
    "openvino backend",
    OpenVINOOptions,
    (
        DTYPE,
        Flag(
            "ov_device",
            ("QWEN3TTS_OV_DEVICE", "OV_DEVICE"),
            "OpenVINO device: CPU, GPU or AUTO (openvino backend)",
            field="device",
        ),
        Flag(
            "ov_weights",
            ("QWEN3TTS_OV_WEIGHTS", "OV_WEIGHTS"),
            "weight format of the export made on first start when --ov-model-dir is not given (openvino "
            "backend)",
            choice(OV_WEIGHTS),
            field="weights",
            choices=OV_WEIGHTS,
        ),
        Flag(
            "ov_model_dir",
            ("QWEN3TTS_OV_MODEL_DIR", "OV_MODEL_DIR"),
            "directory of an export made by wyoming-qwen3tts-export-openvino; default: exported into "
            "--data-dir on first start (openvino backend)",
            optional_path,
            field="model_dir",
        ),
        Flag(
            "ov_cache_dir",
            ("QWEN3TTS_OV_CACHE_DIR", "OV_CACHE_DIR"),
            "OpenVINO compiled-model cache: later starts skip compilation (openvino backend)",
            optional_path,
            field="cache_dir",
        ),
    ),
)

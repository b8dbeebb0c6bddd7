"""The code predictor alone on OpenVINO, beside the PyTorch talker and codec (--predictor openvino-*).

Its export (`--parts predictor`: the predictor step and its heads, a minute or two for a real model)
is made once in <data-dir>/openvino/<model>-<weights>-predictor and reused by later starts while the
model's files are unchanged. The exporter runs in a child process: it loads its own float32 copy of
the model, which would otherwise add to the server's peak memory for good.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from ...requests import EngineError
from ..seams import CodeLayout
from .export import ExportError, read_manifest, source_fingerprint
from .runtime import OpenVINOPredictor, compile_config

_LOGGER = logging.getLogger(__name__)


def predictor_export_dir(model_dir: Path, data_dir: Path, weights: str) -> Path:
    """Where the predictor-only export of model_dir in these weights lives."""
    return data_dir / "openvino" / f"{model_dir.name}-{weights}-predictor"


def _current(export_dir: Path, model_dir: Path) -> bool:
    """True if export_dir holds a predictor export of model_dir as its files are now."""
    try:
        manifest = read_manifest(export_dir)
    except ExportError:
        return False
    source = manifest.get("source", {})
    return manifest.get("parts") == "predictor" and source_fingerprint(model_dir, source) == source.get(
        "fingerprint"
    )


def ensure_predictor_export(model_dir: Path, data_dir: Path, weights: str) -> Path:
    """The predictor export of model_dir, made now (in a child process) if missing or out of date."""
    export_dir = predictor_export_dir(model_dir, data_dir, weights)
    if _current(export_dir, model_dir):
        return export_dir
    _LOGGER.info(
        "Exporting the code predictor of %s to OpenVINO (%s weights) in %s: once, about a minute",
        model_dir,
        weights,
        export_dir,
    )
    command = [sys.executable, "-m", "wyoming_qwen3tts.engine.openvino.export", "--model", str(model_dir)]
    command += ["--output", str(export_dir), "--weights", weights, "--parts", "predictor"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as child:
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line.rstrip())
            if line.startswith(("[", "Exported")):  # the exporter's progress lines
                _LOGGER.info("%s", line.rstrip())
    if child.returncode != 0 or not _current(export_dir, model_dir):
        tail = " | ".join(lines[-3:])[-400:]
        raise EngineError(
            f"exporting the code predictor to OpenVINO failed ({tail}); use --predictor pytorch, or run "
            f"{' '.join(command[2:])} by hand to see why",
            "no-export",
        )
    return export_dir


def load_predictor(export_dir: Path, layout: CodeLayout, threads: int) -> OpenVINOPredictor:
    """The exported predictor compiled for the CPU with the server's thread count, in float32."""
    import openvino as ov

    try:
        return OpenVINOPredictor(export_dir, ov.Core(), "CPU", compile_config("CPU", threads), layout)
    except (RuntimeError, ValueError) as err:  # OpenVINO's own errors, a broken export
        reason = str(err).strip().splitlines()[-1][:300]
        raise EngineError(
            f"OpenVINO could not load the code predictor in {export_dir}: {reason}; delete that folder to "
            "export it again, or use --predictor pytorch",
            "bad-settings",
        ) from None

"""The OpenVINO backend's engine: finds or makes an export, checks it against the model, compiles it.

It receives the EngineOptions every backend does and its own OpenVINOOptions
(options.py). Without --ov-model-dir the export lives in
<data-dir>/openvino/<model>-<weights> and is made on first start (minutes, with
progress in the log); later starts reuse it. An explicit --ov-model-dir must
already hold one: the message names the command that makes it. With
--ov-cache-dir OpenVINO keeps compiled models, so later starts skip compilation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...cpu import default_threads
from ...requests import EngineError
from ..checkpoint_pages import release_checkpoint_pages
from ..model_files import ModelError, local_dir_for, looks_like_path, resolve_model_dir
from ..options import EngineOptions
from ..pipeline import EngineParts, PipelineEngine
from ..prompt import PromptBuilder
from ..seams import CloneReference, CodeLayout, ReferenceEncoder
from .export import ExportError, export_command, export_model, read_manifest, source_fingerprint
from .options import OpenVINOOptions
from .runtime import OpenVINOSteps, compile_config, exported_tables, inference_precision

_LOGGER = logging.getLogger(__name__)


class ExportedReferenceEncoder(ReferenceEncoder):
    """Clones a voice with the exported speaker and codec encoders (compiled on first use)."""

    def __init__(self, export_dir: Path, core, config: dict, device: str) -> None:
        from .encoders import OpenVINOEncoders

        self._encoders = OpenVINOEncoders(export_dir, core, config, device)

    def clone_reference(self, waveform: np.ndarray, rate: int, transcript: str | None) -> CloneReference:
        codes = self._encoders.reference_codes(waveform, rate) if transcript else None
        return CloneReference(codes, self._encoders.speaker_embedding(waveform, rate), transcript)


def default_export_dir(options: EngineOptions, ov_options: OpenVINOOptions) -> Path:
    """Where an export made on first start lives: one per model and weight format."""
    name = Path(options.model.rstrip("/")).name
    return options.data_dir / "openvino" / f"{name}-{ov_options.weights}"


def _model_dir_if_present(options: EngineOptions) -> Path | None:
    """The local model directory, or None where only an export of it is here."""
    if (
        looks_like_path(options.model)
        or (local_dir_for(options.model, options.data_dir) / "config.json").is_file()
    ):
        return resolve_model_dir(options.model, options.data_dir)
    return None


def find_export(
    options: EngineOptions, ov_options: OpenVINOOptions, model_dir: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """The export directory to serve and its manifest, made first where the options allow; checked
    against the model."""
    explicit = ov_options.model_dir is not None
    export_dir = ov_options.model_dir if explicit else default_export_dir(options, ov_options)
    assert export_dir is not None
    model = options.model
    if model_dir is None:
        model_dir = _model_dir_if_present(options)
    if not (export_dir / "manifest.json").is_file():
        if explicit:
            raise EngineError(
                f"--ov-model-dir {export_dir} holds no OpenVINO export; make one with: "
                f"{export_command(model, export_dir)} (or drop --ov-model-dir to export into "
                f"{options.data_dir} on first start)",
                "no-export",
            )
        if model_dir is None:
            model_dir = resolve_model_dir(model, options.data_dir)  # downloads, or says how
        _LOGGER.info(
            "No OpenVINO export of %s yet: exporting to %s (once; this takes minutes)", model_dir, export_dir
        )
        export_model(model_dir, export_dir, ov_options.weights, progress=_LOGGER.info)
    try:
        manifest = read_manifest(export_dir)
    except ExportError as err:
        raise EngineError(
            f"{err}; make it again with: {export_command(model, export_dir)}", "no-export"
        ) from None
    if manifest.get("parts", "all") != "all":
        raise EngineError(
            f"{export_dir} holds only the code predictor (made for the pytorch backend's --predictor "
            f"openvino-*), not every graph --backend openvino runs; make a full export with: "
            f"{export_command(model, default_export_dir(options, ov_options))}",
            "no-export",
        )
    source = manifest["source"]
    if model_dir is not None:
        if source_fingerprint(model_dir, source) != source["fingerprint"]:
            raise EngineError(
                f"the OpenVINO export in {export_dir} was made from another model than {model_dir} "
                f"(made from {source['path']}); make it again with: "
                f"{export_command(str(model_dir), export_dir)}",
                "export-mismatch",
            )
    elif Path(source["path"]).name != Path(model.rstrip("/")).name:
        raise EngineError(
            f"the OpenVINO export in {export_dir} was made from {source['path']}, not {model}; "
            f"pass the --model it was made from, or make it again with: "
            f"{export_command(model, export_dir)}",
            "export-mismatch",
        )
    return export_dir, manifest


class OpenVINOEngine(PipelineEngine):
    """Qwen3-TTS on OpenVINO: exported steps, the same loop, voices and streaming as every backend."""

    def __init__(
        self, options: EngineOptions, ov_options: OpenVINOOptions, model_dir: Path | None = None
    ) -> None:
        import openvino as ov

        try:
            export_dir, manifest = find_export(options, ov_options, model_dir)
        except (ExportError, ModelError) as err:
            raise EngineError(str(err), "no-export") from None
        started = time.monotonic()
        threads = options.threads or default_threads()
        # torch only draws codes and looks up embeddings here: one thread, so that no OpenMP team spins
        # on the cores OpenVINO's threads need (measured: it made every OpenVINO step 3-4x slower).
        torch.set_num_threads(1)
        core = ov.Core()
        if ov_options.cache_dir is not None:
            core.set_property({"CACHE_DIR": str(ov_options.cache_dir)})
        device = ov_options.device
        asked = inference_precision(ov_options.dtype)
        config = compile_config(device, threads, asked)
        prompts = PromptBuilder.from_model_dir(exported_tables(export_dir), export_dir)
        layout = CodeLayout.from_config(prompts.model_config["talker_config"], int(manifest["max_positions"]))
        try:
            steps = OpenVINOSteps(export_dir, core, device, config, layout)
            from .codec import OpenVINOCodec

            codec = OpenVINOCodec(export_dir / "codec.xml", core, config, device)
        except RuntimeError as err:  # OpenVINO's own errors: an unknown device, a broken file
            reason = str(err).strip().splitlines()[-1][:300]
            raise EngineError(
                f"OpenVINO could not compile {export_dir} for {device}: {reason}", "bad-settings"
            ) from None
        if steps.precision != asked:
            _LOGGER.warning(
                "--dtype %s asked OpenVINO for %s; this %s computes in %s",
                ov_options.dtype,
                asked,
                device,
                steps.precision,
            )
        base = manifest["model_kind"] == "base"
        fingerprint = manifest.get("clone_fingerprint") or manifest["source"]["fingerprint"]
        parts = EngineParts(
            steps=steps,
            prompts=prompts,
            codec=codec,
            encoder=ExportedReferenceEncoder(export_dir, core, config, device) if base else None,
            clone_fingerprint=lambda: fingerprint,
            description=f"OpenVINO {ov.__version__} on {device}, {manifest['weights']} weights, "
            f"inference precision {steps.precision}; {threads} threads",
        )
        self.export_dir = export_dir
        super().__init__(export_dir, options, parts, started)
        self._prime(steps, codec)

    def _prime(self, steps: OpenVINOSteps, codec: Any) -> None:
        """Run each graph once, handing back the pages of the mapped .bin files after each.

        OpenVINO repacks weights on a graph's first inference and keeps reading
        the repacked copy; the mapped file's pages (as large as the weights) would
        otherwise stay resident beside it for good. One graph at a time keeps the
        peak to one graph's weights twice, not all of them.
        """
        layout = steps.layout
        width = self.prompts.tables.codec(torch.tensor([0])).shape[-1]
        released = 0
        _, hidden = steps.talker(torch.zeros(1, 1, width), 0, steps.new_talker_cache(2))
        released += release_checkpoint_pages()
        predictor = steps.new_predictor_cache()
        x = torch.cat((hidden, torch.zeros(1, 1, width)), dim=1)
        for group in range(layout.num_groups - 1):
            steps.predictor(x, 0 if group == 0 else group + 1, predictor, group)
            x = torch.zeros(1, 1, width)
        released += release_checkpoint_pages()
        codec.decode(torch.zeros(1, layout.num_groups, 1, dtype=torch.long), codec.initial_state())
        released += release_checkpoint_pages()
        _LOGGER.debug("Released %.0f MB of mapped OpenVINO weights", released / 1024)

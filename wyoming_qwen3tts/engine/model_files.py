"""Find the model directory a --model value names, downloading a hub id into --data-dir if needed.

The server itself always loads from a local directory, fully offline; this
module is the only place that may reach the model hub, and only when the
model is not already on disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

SUPPORTED_TOKENIZER = "qwen3_tts_tokenizer_12hz"


class ModelError(Exception):
    """The model cannot be found or served; the message names the fix."""


def looks_like_path(model: str) -> bool:
    """A value with a path separator start, or that exists, is a path; "Org/Name" is a hub id."""
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


def local_dir_for(model_id: str, data_dir: Path) -> Path:
    """Where a hub id lives under the data directory: data/Qwen3-TTS-12Hz-0.6B-CustomVoice."""
    return data_dir / model_id.rstrip("/").split("/")[-1]


def check_model_dir(model_dir: Path) -> dict:
    """Return the model's config after checking the directory holds a servable 12 Hz checkpoint."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{model_dir} has no config.json: point --model at a Qwen3-TTS model directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{config_path} is not readable JSON ({err}); re-download the model") from None
    if config.get("model_type") != "qwen3_tts":
        raise ModelError(
            f"{model_dir} holds a {config.get('model_type')!r} model, not Qwen3-TTS: "
            "use a Qwen3-TTS-12Hz checkpoint (CustomVoice, Base or VoiceDesign)"
        )
    if config.get("tokenizer_type") != SUPPORTED_TOKENIZER:
        raise ModelError(
            f"{model_dir} uses the {config.get('tokenizer_type')!r} speech tokenizer; this server serves "
            "the 12 Hz models only: use a Qwen3-TTS-12Hz checkpoint"
        )
    if not (model_dir / "speech_tokenizer" / "config.json").is_file():
        raise ModelError(f"{model_dir}/speech_tokenizer is missing: download the whole model folder again")
    if not any(model_dir.glob("*.safetensors")):
        raise ModelError(f"{model_dir} has no *.safetensors weights: download the whole model folder again")
    return config


def resolve_model_dir(model: str, data_dir: Path) -> Path:
    """The local directory of --model: a path as given, or a hub id found in or downloaded to data_dir."""
    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise ModelError(f"model directory {path} does not exist: check --model")
        check_model_dir(path)
        return path

    local = local_dir_for(model, data_dir)
    if (local / "config.json").is_file():
        check_model_dir(local)
        return local

    _LOGGER.info("Model %s not in %s; downloading it to %s", model, data_dir, local)
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=model, local_dir=str(local))
    except Exception as err:  # offline, unknown id, disk full: all end the same way for the user
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ModelError(
            f"model {model} is not in {data_dir} and could not be downloaded ({reason}); "
            f"download it where there is internet (huggingface-cli download {model} --local-dir {local}) "
            "or pass --model /path/to/model"
        ) from None
    check_model_dir(local)
    return local

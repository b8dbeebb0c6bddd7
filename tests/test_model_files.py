"""--model resolution: clear messages for directories the server cannot serve."""

from __future__ import annotations

import json

import pytest

from wyoming_qwen3tts.engine.model_files import ModelError, local_dir_for, resolve_model_dir


def write_model(path, **config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen3_tts", **config}))
    (path / "speech_tokenizer").mkdir(exist_ok=True)
    (path / "speech_tokenizer" / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_a_servable_directory_resolves(tmp_path):
    model = write_model(tmp_path / "m", tokenizer_type="qwen3_tts_tokenizer_12hz")
    assert resolve_model_dir(str(model), tmp_path) == model


def test_a_hub_id_found_in_the_data_dir_needs_no_download(tmp_path):
    model = write_model(local_dir_for("Qwen/Some-Model", tmp_path), tokenizer_type="qwen3_tts_tokenizer_12hz")
    assert resolve_model_dir("Qwen/Some-Model", tmp_path) == model


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"model_type": "llama"}, "not Qwen3-TTS"),
        ({"tokenizer_type": "qwen3_tts_tokenizer_25hz"}, "12 Hz models only"),
    ],
)
def test_models_the_backend_cannot_serve_are_named(tmp_path, config, needle):
    model = write_model(tmp_path / "m", **{"tokenizer_type": "qwen3_tts_tokenizer_12hz", **config})
    with pytest.raises(ModelError, match=needle):
        resolve_model_dir(str(model), tmp_path)


def test_missing_pieces_are_named(tmp_path):
    model = write_model(tmp_path / "m", tokenizer_type="qwen3_tts_tokenizer_12hz")
    (model / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        resolve_model_dir(str(model), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_dir(str(tmp_path / "empty"), tmp_path)

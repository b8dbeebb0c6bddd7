"""Releasing a mapped checkpoint's pages: resident memory goes, the tensors' values stay."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wyoming_qwen3tts.engine.checkpoint_pages import checkpoint_mappings, release_checkpoint_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def _mapped_tensor(path: Path) -> torch.Tensor:
    """A tensor that points into a safetensors mapping, loaded the way transformers loads one."""
    save_file({"weight": torch.randn(2048, 1024)}, str(path))
    with safe_open(str(path), framework="pt") as checkpoint:
        return checkpoint.get_tensor("weight")


def _resident_kb(path: Path) -> int:
    return sum(m.resident_kb for m in checkpoint_mappings() if m.path == str(path))


def test_release_drops_read_pages_and_keeps_values(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    weight = _mapped_tensor(path)
    expected = weight.clone()  # reading it all makes every page resident
    assert _resident_kb(path) >= 8 * 1024 * 0.9  # 8 MB of float32

    released = release_checkpoint_pages()

    assert released >= 8 * 1024 * 0.9
    assert _resident_kb(path) == 0
    assert torch.equal(weight, expected)  # read back from the page cache
    assert _resident_kb(path) > 0


def test_a_written_mapping_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    weight = _mapped_tensor(path)
    weight[0, 0] = 12345.0  # copy-on-write: this page is no longer the file's
    weight.sum()
    resident = _resident_kb(path)

    release_checkpoint_pages()

    assert _resident_kb(path) == resident
    assert weight[0, 0].item() == 12345.0


def test_only_checkpoint_files_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    weight = _mapped_tensor(path)
    paths = {m.path for m in checkpoint_mappings()}
    assert str(path) in paths
    assert all(p.endswith(".safetensors") for p in paths)
    del weight


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_a_loaded_engine_keeps_little_of_its_checkpoint_resident(tiny_models, quantize: str) -> None:
    from wyoming_qwen3tts.engine.options import EngineOptions
    from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
    from wyoming_qwen3tts.engine.pytorch.options import TorchOptions

    model_dir = tiny_models["custom_voice"]
    engine = PyTorchEngine(
        model_dir, EngineOptions(greedy=True, max_frames=4), TorchOptions(quantize=quantize)
    )
    checkpoint = model_dir / "model.safetensors"
    resident_kb = sum(m.resident_kb for m in checkpoint_mappings() if Path(m.path) == checkpoint)
    assert resident_kb <= 0.1 * checkpoint.stat().st_size / 1024  # loading reads all of it
    voice = engine.voices()[0]
    assert len(b"".join(engine.synthesize("Hi.", voice, "english"))) == 4 * 1920 * 2


@pytest.mark.usefixtures("single_torch_thread")
def test_building_clone_prompts_leaves_little_of_the_checkpoints_resident(
    tiny_models, voices_dir, tmp_path: Path
) -> None:
    from wyoming_qwen3tts.engine.options import EngineOptions
    from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
    from wyoming_qwen3tts.engine.pytorch.options import TorchOptions

    model_dir = tiny_models["base"]
    options = EngineOptions(voices_dir=voices_dir, data_dir=tmp_path, greedy=True, max_frames=4)
    engine = PyTorchEngine(model_dir, options, TorchOptions(quantize="none"))
    assert any(voice.kind == "clone" for voice in engine.voices())  # the encoders ran
    for checkpoint in (model_dir / "model.safetensors", model_dir / "speech_tokenizer" / "model.safetensors"):
        resident_kb = sum(m.resident_kb for m in checkpoint_mappings() if Path(m.path) == checkpoint)
        assert resident_kb <= 0.1 * checkpoint.stat().st_size / 1024, checkpoint

"""The OpenVINO voice-cloning encoders give the clone prompt qwen-tts gives for the same audio."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import librosa
import numpy as np
import openvino as ov
import pytest
import soundfile as sf
import torch

from wyoming_qwen3tts.engine.openvino.encoders import (
    CODEC_ENCODER,
    SPEAKER_ENCODER,
    OpenVINOEncoders,
    export_encoders,
)
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts

pytestmark = pytest.mark.usefixtures("single_torch_thread")

COMPILE_CONFIG = {"INFERENCE_NUM_THREADS": 1}
CLIPS = ["anna", "bob", "anna-16k", "anna-12s"]


def _clips(voices_dir: Path) -> dict[str, tuple[np.ndarray, int]]:
    """Reference clips as a voice file gives them, anna at 16 kHz, and 12 s of anna.

    12 s is 300 frames in the Mimi encoder's transformer: beyond its 250-frame sliding window, which
    qwen-tts's CPU attention does not apply, and neither does the export.
    """
    anna, rate = sf.read(voices_dir / "anna.wav", dtype="float32")
    bob, _ = sf.read(voices_dir / "bob.wav", dtype="float32")
    return {
        "anna": (anna, rate),
        "bob": (bob, rate),
        "anna-16k": (librosa.resample(anna, orig_sr=rate, target_sr=16000), 16000),
        "anna-12s": (np.tile(anna, 8), rate),
    }


@pytest.fixture(scope="module")
def exported(tiny_models, voices_dir, tmp_path_factory):
    """qwen-tts's clone prompts of each clip, then the encoders exported from the same model."""
    tts = import_qwen_tts().Qwen3TTSModel.from_pretrained(str(tiny_models["base"]), dtype=torch.float32)
    clips = _clips(voices_dir)
    # Built first, as a server would have: qwen-tts then holds tensors made under inference_mode.
    expected = {
        name: tts.create_voice_clone_prompt(ref_audio=clip, ref_text="Hello.")[0]
        for name, clip in clips.items()
    }
    out_dir = tmp_path_factory.mktemp("openvino-encoders")
    started = time.monotonic()
    files = export_encoders(tts.model, out_dir)
    print(f"export: {time.monotonic() - started:.1f} s")
    return SimpleNamespace(clips=clips, expected=expected, out_dir=out_dir, files=files)


@pytest.fixture(scope="module")
def encoders(exported) -> OpenVINOEncoders:
    return OpenVINOEncoders(exported.out_dir, ov.Core(), COMPILE_CONFIG)


def test_export_writes_both_encoders_with_dynamic_lengths_and_float32_weights(exported):
    assert sorted(p.name for p in exported.files) == sorted(
        ["speaker_encoder.xml", "speaker_encoder.bin", "codec_encoder.xml", "codec_encoder.bin"]
    )
    assert all(p.is_file() for p in exported.files)
    core = ov.Core()
    for name in (SPEAKER_ENCODER, CODEC_ENCODER):
        model = core.read_model(exported.out_dir / name)
        assert model.inputs[0].get_partial_shape()[0].is_dynamic
        weights = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
        assert {op.get_element_type() for op in weights if op.get_element_type().is_real()} == {ov.Type.f32}


def test_nothing_is_compiled_before_first_use(exported):
    compiled: list[str] = []
    core = ov.Core()

    class CountingCore:
        def compile_model(self, path, device, config):
            compiled.append(Path(path).name)
            return core.compile_model(path, device, config)

    encoders = OpenVINOEncoders(exported.out_dir, CountingCore(), COMPILE_CONFIG)  # type: ignore[arg-type]
    assert compiled == []
    waveform, rate = exported.clips["anna"]
    encoders.speaker_embedding(waveform, rate)
    encoders.speaker_embedding(waveform, rate)
    assert compiled == [SPEAKER_ENCODER]
    encoders.reference_codes(waveform, rate)
    assert compiled == [SPEAKER_ENCODER, CODEC_ENCODER]


@pytest.mark.parametrize("clip", CLIPS)
def test_speaker_embedding_matches_qwen_tts(exported, encoders, clip):
    expected = exported.expected[clip].ref_spk_embedding
    actual = encoders.speaker_embedding(*exported.clips[clip])
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    assert torch.cosine_similarity(actual, expected, dim=0) >= 0.9999
    # Measured: at most 2.4e-6 on embeddings of magnitude ~4-5 (float rounding in the convolutions).
    assert (actual - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("clip", CLIPS)
def test_reference_codes_equal_qwen_tts(exported, encoders, clip):
    expected = exported.expected[clip].ref_code
    actual = encoders.reference_codes(*exported.clips[clip])
    assert actual.dtype == torch.int64 and actual.shape == expected.shape
    assert torch.equal(actual, expected)


def test_export_refuses_models_that_do_not_clone(tmp_path):
    with pytest.raises(ValueError, match="only Base models"):
        export_encoders(SimpleNamespace(tts_model_type="custom_voice"), tmp_path)


def test_missing_export_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="speaker_encoder.xml or codec_encoder.xml"):
        OpenVINOEncoders(tmp_path, ov.Core(), {})

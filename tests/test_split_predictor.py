"""The code predictor on OpenVINO beside the PyTorch talker and codec (--predictor openvino-*).

On the tiny models of every kind: with an fp32 predictor export the greedy codes are the all-PyTorch
engine's, alone and as rows of a batch joining mid-way; int4 and int8 teacher-forced predictor logits
are set against float32 (cosines printed with pytest -s); the export holds the predictor alone, is made
once in the data directory and reused, and --backend openvino refuses it; the real server speaks with it.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from conftest import ServerProcess, cosines
from test_batching import KINDS, TEXTS, alone, batched
from test_server import audio_of, describe, is_audio_stop, send
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_qwen3tts.engine.openvino.engine import find_export
from wyoming_qwen3tts.engine.openvino.options import OpenVINOOptions
from wyoming_qwen3tts.engine.openvino.predictor import ensure_predictor_export, predictor_export_dir
from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions
from wyoming_qwen3tts.engine.split_steps import SplitSteps
from wyoming_qwen3tts.flags import SettingsError
from wyoming_qwen3tts.requests import EngineError
from wyoming_qwen3tts.settings import parse_settings

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data directory for the module: each predictor export is made once and reused."""
    return tmp_path_factory.mktemp("data")


def load(model_dir, data_dir, predictor: str, voices_dir=None, quantize="none") -> PyTorchEngine:
    options = EngineOptions(
        greedy=True, warmup=False, max_frames=24, voices_dir=voices_dir, data_dir=data_dir, threads=1
    )
    return PyTorchEngine(
        model_dir, options, TorchOptions(dtype="float32", quantize=quantize, predictor=predictor)
    )


def test_the_predictor_is_chosen_by_flag_or_environment():
    assert parse_settings([], {}).torch.predictor == "pytorch"  # the default: OpenVINO only when asked
    assert parse_settings(["--predictor", "openvino-int4"], {}).torch.predictor == "openvino-int4"
    assert parse_settings([], {"QWEN3TTS_PREDICTOR": "openvino-int8"}).torch.predictor == "openvino-int8"
    with pytest.raises(SettingsError, match="QWEN3TTS_PREDICTOR"):
        parse_settings([], {"QWEN3TTS_PREDICTOR": "int4"})


@pytest.mark.parametrize(("kind", "voice_name"), KINDS)
def test_fp32_predictor_export_gives_the_pytorch_codes(tiny_models, voices_dir, data_dir, kind, voice_name):
    voices = voices_dir if kind == "base" else None
    reference = load(tiny_models[kind], data_dir, "pytorch", voices)
    split = load(tiny_models[kind], data_dir, "openvino-fp32", voices)
    assert isinstance(split.frame_generator.steps, SplitSteps)
    voice = next(v for v in reference.voices() if voice_name is None or v.name == voice_name)
    expected = [alone(reference, text, voice) for text in TEXTS]
    for want, have in zip(expected, [alone(split, text, voice) for text in TEXTS], strict=True):
        assert torch.equal(have, want)
    # Rows of one batch, joining mid-way and ending at different frames: each its solo codes.
    for want, have in zip(expected, batched(split, TEXTS, voice, joins=[0, 2, 5]), strict=True):
        assert torch.equal(have, want)


def forced_logits(engine: PyTorchEngine, voice, codes: torch.Tensor) -> list[torch.Tensor]:
    """Teacher-forced along codes: the talker's and every predictor step's logits, frame by frame."""
    logits: list[torch.Tensor] = []
    prompt = engine.prompt(TEXTS[0], voice, "english")
    list(engine.frame_generator.frames(prompt, len(codes), forced=codes, record=logits))
    return logits


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantized_predictor_logits_against_float32(tiny_models, data_dir, weights):
    reference = load(tiny_models["custom_voice"], data_dir, "pytorch")
    voice = reference.voices()[0]
    codes = alone(reference, TEXTS[0], voice)[:8]
    quantized = load(tiny_models["custom_voice"], data_dir, f"openvino-{weights}")
    with torch.inference_mode():
        want = forced_logits(reference, voice, codes)
        got = forced_logits(quantized, voice, codes)
    # Every 16th are the talker's (the same PyTorch float32 talker in both): equal; the rest the predictor's.
    assert all(torch.equal(w, g) for w, g in zip(want[::16], got[::16], strict=True))
    predictor = [i for i in range(len(want)) if i % 16]
    values = cosines([want[i] for i in predictor], [got[i] for i in predictor])
    print(
        f"\n{weights} predictor logits, cosine to float32: mean {values.mean():.5f}, worst {values.min():.5f}"
    )
    assert values.mean() >= (0.99 if weights == "int8" else 0.9)


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_the_pytorch_predictor_weights_are_released(tiny_models, data_dir, quantize):
    engine = load(tiny_models["custom_voice"], data_dir, "openvino-fp32", quantize=quantize)
    torch_steps = engine.parts.steps.talker_steps  # int8 once kept them: a name shadowed the flag
    assert not hasattr(torch_steps, "predictor_stack") and not hasattr(torch_steps, "predictor_heads")


def test_the_export_holds_the_predictor_alone_and_is_reused(tiny_models, data_dir):
    model = tiny_models["custom_voice"]
    export = ensure_predictor_export(model, data_dir, "fp32")
    assert export == predictor_export_dir(model, data_dir, "fp32")
    assert (export / "predictor.xml").is_file() and len(list(export.glob("predictor_head_*.xml"))) == 15
    assert not (export / "talker.xml").exists() and not (export / "codec.xml").exists()
    stamp = (export / "manifest.json").stat().st_mtime_ns
    assert ensure_predictor_export(model, data_dir, "fp32") == export
    assert (export / "manifest.json").stat().st_mtime_ns == stamp  # not made again
    with pytest.raises(EngineError, match="holds only the code predictor"):
        find_export(EngineOptions(model=str(model)), OpenVINOOptions(model_dir=export), model)


def test_the_server_speaks_with_the_openvino_predictor(tiny_models, tmp_path):
    """The pytorch backend with --predictor openvino-int4: exported on first start, then reused."""
    args = ["--model", str(tiny_models["custom_voice"]), "--data-dir", str(tmp_path), "--predictor"]
    args += ["openvino-int4", "--greedy", "--no-warmup", "--threads", "1", "--max-frames", "16"]
    for start in ("first", "second"):
        server = ServerProcess(args)
        try:
            server.wait_ready(timeout=600)
            assert asyncio.run(describe(server.uri)).tts
            event = Synthesize(text=TEXTS[0], voice=SynthesizeVoice(name="ryan")).event()
            events = asyncio.run(send(server.uri, event, until=is_audio_stop))
            assert events[-1].type == "audio-stop" and len(audio_of(events)) > 0
        finally:
            log = server.stop()
        assert "code predictor on OpenVINO (int4)" in log
        assert ("Exporting the code predictor" in log) == (start == "first"), log[-2000:]


def test_a_failed_export_says_what_failed_and_how_to_go_on(tiny_models, tmp_path):
    """A model the exporter cannot read: one EngineError naming the failure and --predictor pytorch."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "generation_config.json"):
        (broken / name).write_bytes((tiny_models["custom_voice"] / name).read_bytes())  # no weights
    with pytest.raises(EngineError) as caught:
        ensure_predictor_export(broken, tmp_path / "data", "int4")
    message = str(caught.value)
    assert "exporting the code predictor to OpenVINO failed" in message
    assert "--predictor pytorch" in message and "\n" not in message
    assert not predictor_export_dir(broken, tmp_path / "data", "int4").exists()

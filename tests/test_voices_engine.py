"""The voice catalog on the tiny real models, in-process: every kind, the prompt cache, reloads."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts
from wyoming_qwen3tts.voices import VoiceError

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FRAMES = 3
EVERY_KIND = {
    "kitchen": {"speaker": "ryan", "instruct": "Very cheerful", "language": "en", "description": "Kitchen"},
    "grandma": {"audio": "clips/grandma.wav", "transcript": "Hello, this is my voice.", "language": "de"},
    "whisper": {"audio": "clips/grandma.wav", "description": "Grandma, speaker embedding only"},
    "narrator": {"instruct": "A warm, calm, middle-aged female voice", "languages": ["en", "fr"]},
}


def make_voices_dir(root: Path, source: Path, voices: dict | None = None) -> Path:
    """anna (audio + transcript) and bob (audio alone) as per-file voices, and voices.json."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("anna.wav", "anna.txt", "anna.json", "bob.wav"):
        shutil.copy(source / name, root / name)
    (root / "clips").mkdir(exist_ok=True)
    shutil.copy(source / "anna.wav", root / "clips" / "grandma.wav")
    (root / "voices.json").write_text(json.dumps({"voices": voices or EVERY_KIND}), encoding="utf-8")
    return root


def engine_for(model: Path, voices_dir: Path | None, data_dir: Path) -> PyTorchEngine:
    options = EngineOptions(voices_dir=voices_dir, data_dir=data_dir, greedy=True, max_frames=FRAMES)
    return PyTorchEngine(model, options, TorchOptions(quantize="none", dtype="float32"))


def speak(engine: PyTorchEngine, name: str, language: str = "auto") -> bytes:
    voice = next(v for v in engine.voices() if v.name == name)
    return b"".join(engine.synthesize("Hello there.", voice, language))


class EncoderCalls:
    """Counts the runs of what builds a clone prompt: qwen-tts's call, the speaker and the codec encoder."""

    def __init__(self, monkeypatch) -> None:
        qwen_tts = import_qwen_tts()
        from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration

        self.calls: Counter[str] = Counter()
        for owner, name in (
            (qwen_tts.Qwen3TTSModel, "create_voice_clone_prompt"),
            (Qwen3TTSForConditionalGeneration, "extract_speaker_embedding"),
            (qwen_tts.Qwen3TTSTokenizer, "encode"),
        ):
            monkeypatch.setattr(owner, name, self._counting(name, getattr(owner, name)))

    def _counting(self, name, original):
        def counted(*args, **kwargs):
            self.calls[name] += 1
            return original(*args, **kwargs)

        return counted


def test_custom_voice_model_speaks_named_presets_and_skips_other_kinds(
    tiny_models, voices_dir, tmp_path, caplog
):
    root = make_voices_dir(tmp_path / "voices", voices_dir)
    with caplog.at_level(logging.WARNING):
        engine = engine_for(tiny_models["custom_voice"], root, tmp_path / "data")
    voices = {voice.name: voice for voice in engine.voices()}
    assert list(voices)[0] == "kitchen"  # voices.json first: the default voice
    assert {"ryan", "vivian", "uncle_fu"} <= set(voices) and not {"grandma", "narrator", "anna"} & set(voices)
    kitchen = voices["kitchen"]
    assert (kitchen.kind, kitchen.speaker, kitchen.languages, kitchen.description) == (
        "preset",
        "ryan",
        ("english",),
        "Kitchen",
    )
    # The tiny CustomVoice model is a "0b6" one: qwen-tts drops its instructions, and start-up says so.
    assert kitchen.instruct is None
    assert "kitchen" in caplog.text and "ignores style instructions" in caplog.text
    for skipped in ("grandma", "whisper", "narrator", "anna", "bob"):
        assert f"Voice {skipped} (" in caplog.text
    assert "cannot speak; load a Base model" in caplog.text.replace("which this CustomVoice model ", "")
    assert speak(engine, "kitchen", "english") == speak(engine, "ryan", "english")  # plain ryan, as warned


def test_a_1_7b_custom_voice_model_follows_a_preset_instruct(tiny_models, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["custom_voice"], model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps({**config, "tts_model_size": "1b7"}), encoding="utf-8")
    root = tmp_path / "voices"
    root.mkdir()
    (root / "voices.json").write_text(
        json.dumps({"voices": {"kitchen": EVERY_KIND["kitchen"]}}), encoding="utf-8"
    )
    with caplog.at_level(logging.WARNING):
        engine = engine_for(model, root, tmp_path / "data")
    kitchen = engine.voices()[0]
    assert kitchen.instruct == "Very cheerful" and "ignores style instructions" not in caplog.text
    assert kitchen.description == "Kitchen"
    assert speak(engine, "kitchen", "english") != speak(engine, "ryan", "english")  # the instruct is spoken


def test_custom_voice_preset_with_an_unknown_speaker_stops_start_up_with_its_fix(tiny_models, tmp_path):
    root = tmp_path / "voices"
    root.mkdir()
    (root / "voices.json").write_text('{"voices": {"hall": {"speaker": "nobody"}}}', encoding="utf-8")
    with pytest.raises(VoiceError) as error:
        engine_for(tiny_models["custom_voice"], root, tmp_path / "data")
    message = str(error.value)
    assert str(root / "voices.json") in message and "'hall'" in message and "ryan" in message


def test_base_model_clones_in_both_modes_and_shares_equal_prompts(
    tiny_models, voices_dir, tmp_path, monkeypatch
):
    root = make_voices_dir(tmp_path / "voices", voices_dir)
    encoders = EncoderCalls(monkeypatch)
    engine = engine_for(tiny_models["base"], root, tmp_path / "data")
    voices = {voice.name: voice for voice in engine.voices()}
    assert list(voices) == ["grandma", "whisper", "anna", "bob"]
    grandma, whisper = voices["grandma"], voices["whisper"]
    assert grandma.languages == ("german",) and grandma.clone_prompt.reference.ref_code is not None
    assert whisper.clone_prompt.reference.ref_code is None and whisper.clone_prompt.primed is None
    assert whisper.description == "Grandma, speaker embedding only"
    assert voices["bob"].description == "bob (cloned from reference audio only)"
    # grandma's recording and transcript are anna's: one prompt, built once, for both voices.
    assert grandma.clone_prompt is voices["anna"].clone_prompt
    assert encoders.calls["create_voice_clone_prompt"] == 3  # anna/grandma, whisper, bob
    for name in voices:
        audio = speak(engine, name)
        assert len(audio) == FRAMES * 1920 * 2 and any(audio)


def test_voice_design_model_speaks_configured_instructions(tiny_models, voices_dir, tmp_path):
    root = make_voices_dir(tmp_path / "voices", voices_dir)
    (root / "calm.json").write_text('{"instruct": "A calm, slow voice", "language": "de"}', encoding="utf-8")
    engine = engine_for(tiny_models["voice_design"], root, tmp_path / "data")
    voices = {voice.name: voice for voice in engine.voices()}
    assert list(voices) == ["narrator", "calm"]  # no "default" once a design is configured
    assert voices["narrator"].instruct == EVERY_KIND["narrator"]["instruct"]
    assert voices["narrator"].languages == ("english", "french")
    assert voices["calm"].languages == ("german",)
    narrator, calm = speak(engine, "narrator", "english"), speak(engine, "calm", "english")
    assert len(narrator) == FRAMES * 1920 * 2 and narrator != calm  # the instruction is part of the prompt


def test_cached_prompts_skip_both_encoders_after_a_restart(tiny_models, voices_dir, tmp_path, monkeypatch):
    root = make_voices_dir(tmp_path / "voices", voices_dir, {"whisper": EVERY_KIND["whisper"]})
    data = tmp_path / "data"
    first = engine_for(tiny_models["base"], root, data)
    before = {voice.name: speak(first, voice.name) for voice in first.voices()}
    prompts = {voice.name: voice.clone_prompt.reference for voice in first.voices()}
    assert len(list((data / "voice-cache").glob("*.safetensors"))) == 3  # anna, bob, whisper
    del first

    encoders = EncoderCalls(monkeypatch)
    second = engine_for(tiny_models["base"], root, data)
    assert encoders.calls == Counter()  # neither the speaker encoder nor the codec encoder ran
    for voice in second.voices():
        item, cached = prompts[voice.name], voice.clone_prompt.reference
        assert torch.equal(item.speaker_embedding, cached.speaker_embedding)
        assert (item.ref_code is None and cached.ref_code is None) or torch.equal(
            item.ref_code, cached.ref_code
        )
        assert item.ref_text == cached.ref_text
        assert speak(second, voice.name) == before[voice.name]

    # A new transcript is another prompt: computed, not taken from the cache.
    (root / "anna.txt").write_text("Another transcript entirely.", encoding="utf-8")
    third = engine_for(tiny_models["base"], root, data)
    assert encoders.calls["create_voice_clone_prompt"] == 1
    assert len(list((data / "voice-cache").glob("*.safetensors"))) == 4
    assert next(v for v in third.voices() if v.name == "anna").clone_prompt.reference.ref_text.startswith(
        "Another"
    )


def test_reload_adds_removes_and_survives_broken_files(
    tiny_models, voices_dir, tmp_path, monkeypatch, caplog
):
    root = tmp_path / "voices"
    root.mkdir()
    for name in ("anna.wav", "anna.txt"):
        shutil.copy(voices_dir / name, root / name)
    encoders = EncoderCalls(monkeypatch)
    engine = engine_for(tiny_models["base"], root, tmp_path / "data")
    anna = engine.voices()[0]
    anna_audio = speak(engine, "anna")
    assert engine.reload_voices() is False  # nothing changed: only a stat of each file

    shutil.copy(voices_dir / "bob.wav", root / "carl.wav")
    (root / "voices.json").write_text(
        json.dumps({"voices": {"narrator": {"instruct": "Calm"}, "dora": {"audio": "dora.wav"}}}),
        encoding="utf-8",
    )
    (root / "dora.wav").write_bytes(b"this is not audio")
    with caplog.at_level(logging.WARNING):
        assert engine.reload_voices() is True
    assert [v.name for v in engine.voices()] == ["anna", "carl"]
    assert "Voice narrator (" in caplog.text  # a VoiceDesign voice on a Base model: skipped, said so
    assert "dora.wav: voice 'dora': cannot be read as audio" in caplog.text
    assert "the voice is left out" in caplog.text
    assert engine.voices()[0].clone_prompt is anna.clone_prompt  # anna was not built again
    assert encoders.calls["create_voice_clone_prompt"] == 2  # anna at start, then carl (dora is no audio)

    # A request that started with anna keeps its voice after anna's files are gone.
    for name in ("anna.wav", "anna.txt"):
        (root / name).unlink()
    (root / "voices.json").write_text("{not json", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert engine.reload_voices() is True
    assert [v.name for v in engine.voices()] == ["carl"]
    assert "not valid JSON" in caplog.text
    assert b"".join(engine.synthesize("Hello there.", anna, "auto")) == anna_audio
    assert anna.clone_prompt.key not in engine._clone_prompts  # the catalog no longer holds it

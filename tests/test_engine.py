"""The PyTorch engine end to end in-process: its streamed audio is qwen-tts's own audio."""

from __future__ import annotations

import numpy as np
import torch
from conftest import snr_db

from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine, to_pcm16
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions
from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts

TEXT = "Hello there, this is a test."


def test_greedy_streamed_audio_equals_qwen_tts_generate(tiny_models):
    model_dir = tiny_models["custom_voice"]
    frames = 13
    stock = import_qwen_tts().Qwen3TTSModel.from_pretrained(str(model_dir), dtype=torch.float32)
    wavs, rate = stock.generate_custom_voice(
        text=TEXT,
        speaker="ryan",
        language="english",
        do_sample=False,
        subtalker_dosample=False,
        max_new_tokens=frames + 1,
    )
    expected = np.frombuffer(to_pcm16(wavs[0]), "<i2").astype(np.float64)

    engine = PyTorchEngine(
        model_dir,
        EngineOptions(greedy=True, max_frames=frames),
        TorchOptions(dtype="float32", quantize="none"),
    )
    voice = next(v for v in engine.voices() if v.name == "ryan")
    chunks = list(engine.synthesize(TEXT, voice, "english"))
    got = np.frombuffer(b"".join(chunks), "<i2").astype(np.float64)

    assert rate == engine.sample_rate
    sizes = [len(c) // 2 // 1920 for c in chunks]
    # 1 frame first, then 3, then up to 8 a chunk; with a codec thread (two threads or more), a chunk
    # decoded there may be handed out together with the next one: [1, 3, 8, 1] or [1, 3, 9].
    assert sizes[:2] == [1, 3] and sizes in ([1, 3, 8, 1], [1, 3, 9])
    assert got.shape == expected.shape == (frames * 1920,)
    assert snr_db(expected, got) >= 40
    # No click where chunks join: around each joint the stream is the whole-utterance audio.
    joints = np.cumsum([len(c) // 2 for c in chunks])[:-1]
    around = np.concatenate([np.arange(j - 8, j + 8) for j in joints])
    assert np.abs(got - expected)[around].max() <= 2


def test_clone_voice_reference_codes_are_decoded_once(tiny_models, voices_dir, tmp_path):
    options = EngineOptions(voices_dir=voices_dir, data_dir=tmp_path, greedy=True, max_frames=6)
    engine = PyTorchEngine(tiny_models["base"], options, TorchOptions(quantize="none"))
    anna = next(v for v in engine.voices() if v.name == "anna")
    primed = anna.clone_prompt.primed
    frames_before = primed.frames
    first = b"".join(engine.synthesize("Hi.", anna, "english"))
    second = b"".join(engine.synthesize("Hi.", anna, "english"))
    assert first == second and len(first) == 6 * 1920 * 2
    assert primed.frames == frames_before == anna.clone_prompt.reference.ref_code.shape[0]

"""The benchmark's rows run what their names say: the sampled row draws its codes, the others are greedy;
only the codec-in-turn row decodes without a codec thread; every row runs on the malloc the server would
choose."""

from __future__ import annotations

from pathlib import Path

from benchmarks.benchmark import SETTINGS, engine_settings, malloc_environment, malloc_name
from wyoming_qwen3tts import allocator


def test_only_the_sampled_row_samples():
    model_dir = Path("/nonexistent/model")
    sampled = engine_settings(SETTINGS["engine-int8-sampled"], model_dir, 48, 2)
    greedy = engine_settings(SETTINGS["engine-int8"], model_dir, 48, 2)
    assert sampled.engine.greedy is False and greedy.engine.greedy is True
    assert (sampled.torch, sampled.engine.max_frames) == (greedy.torch, greedy.engine.max_frames)


def test_only_the_codec_in_turn_row_decodes_without_a_codec_thread():
    model_dir = Path("/nonexistent/model")
    in_turn = engine_settings(SETTINGS["engine-int8-codec-in-turn"], model_dir, 48, 2)
    others = [
        engine_settings(s, model_dir, 48, 2) for n, s in SETTINGS.items() if n != "engine-int8-codec-in-turn"
    ]
    assert in_turn.torch.codec_thread is False and all(o.torch.codec_thread for o in others)


def test_the_rows_run_on_the_malloc_the_server_would_choose(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("QWEN3TTS_ALLOCATOR", raising=False)
    assert malloc_environment()["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
    assert malloc_name(malloc_environment()) == "tcmalloc"
    for name in ("openvino-int8", "engine-int8-ov-predictor"):  # OpenVINO would abort on it
        assert "LD_PRELOAD" not in malloc_environment(SETTINGS[name].backend, SETTINGS[name].predictor)
    monkeypatch.setenv("QWEN3TTS_ALLOCATOR", "system")
    assert "LD_PRELOAD" not in malloc_environment()
    assert malloc_name(malloc_environment()) == "the C library's malloc"

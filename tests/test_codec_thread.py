"""The codec on a thread of its own beside the steps (engine/codec_thread.py), on the tiny CustomVoice model.

With two torch threads the engine decodes a sentence's later chunks on the codec thread while the next
frames' steps run: every sentence must still get its audio whole and in order, as when decoded in turn,
with sentences joining and leaving mid-way; a sentence dropped with a chunk on the thread costs the
others nothing; a failed job fails the step that collects it, and the engine goes on.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from wyoming_qwen3tts.engine import codec_thread as codec_thread_module
from wyoming_qwen3tts.engine.codec_thread import CodecThread
from wyoming_qwen3tts.engine.options import EngineOptions
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.pytorch.options import TorchOptions

TEXTS = [
    "Turn on the kitchen light, please.",
    "Good morning.",
    "The front door is locked and the alarm is set for the night.",
]


@pytest.fixture(scope="module")
def engine(tiny_models, tmp_path_factory):
    saved = torch.get_num_threads()
    options = EngineOptions(
        greedy=True, warmup=False, max_frames=24, threads=2, data_dir=tmp_path_factory.mktemp("data")
    )
    engine = PyTorchEngine(
        tiny_models["custom_voice"], options, TorchOptions(dtype="float32", quantize="none")
    )
    yield engine
    torch.set_num_threads(saved)


@pytest.fixture
def in_turn(engine):
    """The same engine, its codec thread set aside for the test: every chunk decoded in turn."""
    kept = engine._codec_thread
    engine._codec_thread = None
    yield engine
    engine._codec_thread = kept


def speak(
    engine,
    texts: list[str],
    joins: list[int],
    drop: dict[int, int] | None = None,
    dropped: list | None = None,
) -> list[np.ndarray]:
    """Each text's PCM as int16, sentence i starting once joins[i] frames ran; drop {i: frame}: sentence i
    is no longer advanced from that frame on (its listener left; dropped gets whether a chunk of it was
    on the codec thread then)."""
    voice = next(v for v in engine.voices() if v.name == "ryan")
    streams: list = [None] * len(texts)
    pcm: list[list[bytes]] = [[] for _ in texts]
    tick = 0
    drop = drop or {}
    ended: set[int] = set()  # as the worker does: a sentence once done is never advanced again
    while tick == 0 or any(
        s is None or (i not in ended and drop.get(i, 1e9) > tick) for i, s in enumerate(streams)
    ):
        joining = [i for i in range(len(texts)) if streams[i] is None and joins[i] <= tick]
        started = engine.start_many([(texts[i], voice, "english") for i in joining]) if joining else []
        for index, stream in zip(joining, started, strict=True):
            streams[index] = stream
        for index, at in drop.items():
            if at == tick and dropped is not None:
                dropped.append(streams[index].decoding)
        active = [
            i for i, s in enumerate(streams) if s is not None and i not in ended and drop.get(i, 1e9) > tick
        ]
        if active:
            for index, chunk in zip(active, engine.advance([streams[i] for i in active]), strict=True):
                pcm[index].append(chunk)
                if streams[index].done:
                    ended.add(index)
        tick += 1
        assert tick < 300
    return [np.frombuffer(b"".join(chunks), dtype="<i2") for chunks in pcm]


def test_the_engine_has_a_codec_thread_with_two_threads(engine):
    codec = engine._codec_thread
    assert codec is not None and (codec.threads, codec.step_threads) == (1, 1)
    assert "codec on 1 of them beside the steps" in engine.parts.description


def test_sentences_get_their_audio_whole_and_in_order(engine, monkeypatch):
    submitted: list[int] = []
    submit = engine._codec_thread.submit
    monkeypatch.setattr(
        engine._codec_thread, "submit", lambda keys, *rest: submitted.append(len(keys)) or submit(keys, *rest)
    )
    got = speak(engine, TEXTS, [0, 2, 5])
    assert submitted, "no chunk went to the codec thread"
    engine._codec_thread, kept = None, engine._codec_thread
    try:
        expected = speak(engine, TEXTS, [0, 2, 5])
    finally:
        engine._codec_thread = kept
    for text, a, b in zip(TEXTS, got, expected, strict=True):
        assert a.shape == b.shape and a.size > 0, text
        # One thread or two sum the codec's products in another order: a sample may land one step away.
        assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= 1, text


def test_a_sentence_dropped_with_a_chunk_on_the_thread_costs_the_others_nothing(engine, in_turn):
    expected = speak(in_turn, TEXTS[:2], [0, 0])[1]
    engine._codec_thread = engine_thread = CodecThread(1, 1)
    try:
        # Sentence 0 leaves at frame 13: its 8-frame chunk went to the thread at frame 12.
        dropped: list[bool] = []
        got = speak(engine, TEXTS[:2], [0, 0], drop={0: 13}, dropped=dropped)
        assert dropped == [True]
        assert np.abs(got[1].astype(np.int32) - expected.astype(np.int32)).max() <= 1
        again = speak(engine, TEXTS[1:2], [0])[0]
        assert np.abs(again.astype(np.int32) - expected.astype(np.int32)).max() <= 1
    finally:
        engine_thread.close()


def test_a_failed_job_fails_the_step_that_collects_it_and_the_engine_goes_on(engine, monkeypatch):
    def broken(decoders, chunks):
        raise RuntimeError("codec broke")

    monkeypatch.setattr(codec_thread_module, "decode_together", broken)
    with pytest.raises(RuntimeError, match="codec broke"):
        speak(engine, TEXTS[:1], [0])
    monkeypatch.undo()
    assert not engine._codec_thread.pending
    assert speak(engine, TEXTS[1:2], [0])[0].size > 0


def test_the_job_runs_on_its_threads_and_the_steps_on_the_rest_while_it_does(engine, monkeypatch):
    release = threading.Event()
    seen: list[int] = []

    def job(decoders, chunks):
        seen.append(torch.get_num_threads())
        release.wait(10)
        return [torch.zeros(1)]

    monkeypatch.setattr(codec_thread_module, "decode_together", job)
    codec = engine._codec_thread
    codec.submit(["key"], [None], [torch.zeros(1, 16)])
    try:
        with engine._step_threads():
            during = torch.get_num_threads()
    finally:
        release.set()
    assert codec.collect()[0][0] == "key"
    with engine._step_threads():
        after = torch.get_num_threads()
    assert seen == [1] and during == 1 and after == 2 and torch.get_num_threads() == 2


@pytest.mark.parametrize(
    ("threads", "predictor", "flag", "expected"),
    [
        (2, "pytorch", True, 1),
        (4, "pytorch", True, 2),
        (1, "pytorch", True, 0),
        (2, "openvino-int4", True, 0),
        (2, "pytorch", False, 0),
    ],
)
def test_who_gets_a_codec_thread(threads, predictor, flag, expected):
    engine = PyTorchEngine.__new__(PyTorchEngine)
    engine.predictor = predictor
    assert engine._codec_threads(threads, TorchOptions(codec_thread=flag)) == expected

"""The speech service as any front end drives it: one speak() per request, text whole or fed in pieces,
whole-sample PCM out, and one log line per request saying how it ended."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from test_handler import FakeEngine, expected_audio, expected_pcm

from wyoming_qwen3tts.requests import EngineError, RequestError, SpeechRequest, Utterance, VoiceRequest
from wyoming_qwen3tts.service import Speech, SpeechOptions, SpeechService
from wyoming_qwen3tts.worker import InferenceWorker


@pytest.fixture
async def service() -> AsyncIterator[SpeechService]:
    worker = InferenceWorker()
    yield SpeechService(FakeEngine(chunk_bytes=301), SpeechOptions(max_text_chars=200), worker)
    await worker.aclose()


async def audio_of(speech: Speech) -> bytes:
    async with speech:
        return b"".join([pcm async for pcm in speech])


async def test_a_whole_text_is_spoken_sentence_by_sentence_in_whole_samples(service, caplog) -> None:
    text = "Hello there. How are you?"
    speech = service.speak(SpeechRequest(VoiceRequest(name="vivian"), text, client="test 1"))
    assert speech.waiting == 3  # two sentences and the end, ready before any is spoken

    with caplog.at_level(logging.INFO, logger="wyoming_qwen3tts.service"):
        assert await audio_of(speech) == expected_audio(text)

    assert speech.utterance.samples == len(expected_audio(text)) // 2
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert "client=test 1 voice=Vivian language=auto" in line and line.endswith("outcome=ok")


async def test_fed_text_speaks_each_sentence_as_soon_as_it_is_complete(service) -> None:
    speech = service.speak(SpeechRequest(VoiceRequest(name="Ryan")))  # no text: it is fed
    assert not speech.speaking and speech.waiting == 0
    speech.feed("The first one. The sec")
    assert speech.speaking and speech.waiting == 1

    async with speech:
        first = await anext(speech)  # before the text is complete
        speech.feed("ond one")
        speech.close()
        rest = b"".join([pcm async for pcm in speech])

    assert first and (first + rest) == expected_pcm("The first one.") + expected_pcm("The second one")


async def test_a_request_that_cannot_be_spoken_is_refused_at_once(service) -> None:
    for request, code in [
        (SpeechRequest(VoiceRequest(name="nobody"), "Hi."), "unknown-voice"),
        (SpeechRequest(text="x" * 201), "text-too-long"),
        (SpeechRequest(text="<speak>Hi", text_format="ssml"), "invalid-ssml"),
        (SpeechRequest(text="Hi.", text_format="markdown"), "invalid-event"),
    ]:
        with pytest.raises(RequestError) as refused:
            service.speak(request)
        assert refused.value.code == code
    speech = service.speak(SpeechRequest())
    speech.feed("x" * 150)
    with pytest.raises(RequestError, match="longer than 200"):
        speech.feed("x" * 51)


@pytest.mark.parametrize(
    ("text", "stop_with", "raised", "outcome"),
    [
        ("Please REFUSE this.", None, EngineError, "error:voice-refused"),
        ("It will CRASH midway.", None, RuntimeError, "error:synthesis-failed"),
        ("The client goes away.", ConnectionResetError, ConnectionResetError, "dropped"),
        ("The request is cancelled.", asyncio.CancelledError, asyncio.CancelledError, "cancelled"),
    ],
)
async def test_the_log_line_says_how_a_request_ended(
    service, caplog, text, stop_with, raised, outcome
) -> None:
    speech = service.speak(SpeechRequest(text=text))
    with caplog.at_level(logging.INFO, logger="wyoming_qwen3tts.service"), pytest.raises(raised):
        async with speech:
            async for _ in speech:
                if stop_with is not None:
                    raise stop_with()
    assert any(r.getMessage().endswith(f"outcome={outcome}") for r in caplog.records)


def test_the_listener_buffer_counts_audio_handed_out_less_what_a_real_time_player_has_played(monkeypatch):
    """Utterance.buffered_seconds, which paces the sentences made ahead: a player that starts at the first
    audio, plays in real time and pauses when it runs dry (as the benchmark's --answer listener)."""
    now = [100.0]
    monkeypatch.setattr("wyoming_qwen3tts.requests.time.monotonic", lambda: now[0])
    utterance = Utterance(voice_name="Ryan", language="english", sample_rate=1000)
    assert utterance.buffered_seconds() == 0.0
    utterance.whole_samples(b"\0\0" * 2000, 2)  # 2 s of audio at once
    assert utterance.buffered_seconds() == pytest.approx(2.0)
    now[0] += 0.5
    assert utterance.buffered_seconds() == pytest.approx(1.5)
    utterance.whole_samples(b"\0\0" * 500, 2)
    assert utterance.buffered_seconds() == pytest.approx(2.0)
    now[0] += 5.0  # ran dry 2 s ago: the player waited, it did not skip ahead
    assert utterance.buffered_seconds() == 0.0
    utterance.whole_samples(b"\0\0" * 1000, 2)
    assert utterance.buffered_seconds() == pytest.approx(1.0)

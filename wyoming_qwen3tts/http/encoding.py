"""The HTTP API's audio as it streams: PCM encoded by PyAV (FFmpeg's codecs and muxers), and OpenAI's SSE.

AudioEncoder hands back the encoded bytes ready so far: every container is written for a pipe (no seek back
to patch headers) and flushed packet by packet; `speed` is FFmpeg's atempo (tempo without pitch).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import OutputContainer

SPEED_RANGE = (0.25, 4.0)
_ATEMPO_RANGE = (0.5, 2.0)  # one atempo filter's range; chained for the rest


@dataclass(frozen=True)
class AudioFormat:
    """One response_format: how it is muxed and encoded, and what it is served as."""

    name: str
    content_type: str
    container: str | None  # None: raw PCM, no container
    codec: str | None
    lossless: bool


FORMATS = {
    f.name: f
    for f in (
        AudioFormat("mp3", "audio/mpeg", "mp3", "libmp3lame", lossless=False),
        AudioFormat("opus", "audio/ogg", "ogg", "libopus", lossless=False),
        AudioFormat("aac", "audio/aac", "adts", "aac", lossless=False),
        AudioFormat("flac", "audio/flac", "flac", "flac", lossless=True),
        AudioFormat("wav", "audio/wav", "wav", "pcm_s16le", lossless=True),
        AudioFormat("pcm", "audio/pcm", None, None, lossless=True),
    )
}


class _Pipe(io.RawIOBase):
    """A write-only, unseekable file: muxers write for a stream, and we collect what they wrote."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        self.pending += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.pending)
        self.pending.clear()
        return data


class AudioEncoder:
    """PCM in, encoded bytes out, chunk by chunk; finish() flushes what the codec still holds."""

    def __init__(self, audio_format: AudioFormat, sample_rate: int, speed: float = 1.0) -> None:
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise ValueError(f"speed must be between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}")
        self.format = audio_format
        self.sample_rate = sample_rate
        self._tempo = _TempoFilter(sample_rate, speed) if speed != 1.0 else None
        self._pipe = _Pipe()
        self._container: OutputContainer | None = None
        self._stream: AudioStream | None = None
        if audio_format.container is not None and audio_format.codec is not None:
            options = {"flush_packets": "1"}
            if audio_format.container == "ogg":
                options["page_duration"] = "20000"  # microseconds: an Ogg page per packet, not per second
            self._container = av.open(self._pipe, mode="w", format=audio_format.container, options=options)
            stream = self._container.add_stream(audio_format.codec, rate=sample_rate, layout="mono")
            assert isinstance(stream, AudioStream)
            self._stream = stream
            # Converted to the sample format the codec takes (s32p for mp3, fltp for aac, ...).
            self._resampler = av.AudioResampler(
                format=stream.codec_context.format.name, layout="mono", rate=sample_rate
            )

    def encode(self, pcm: bytes) -> bytes:
        """Encoded bytes ready after this PCM (may be empty while the codec fills a frame)."""
        if not pcm:
            return b""
        frame = _frame(np.frombuffer(pcm, dtype=np.int16), self.sample_rate)
        frames = self._tempo.push(frame) if self._tempo else [frame]
        return self._write(frames)

    def finish(self) -> bytes:
        """The last bytes: what the filter and the codec still held, and the container's trailer."""
        frames = self._tempo.push(None) if self._tempo else []
        data = self._write(frames)
        if self._container is not None:
            assert self._stream is not None
            for resampled in self._resampler.resample(None):
                self._mux(resampled)
            self._mux(None)
            self._container.close()
            data += self._pipe.take()
        return data

    def _write(self, frames: list[av.AudioFrame]) -> bytes:
        if self._container is None:  # raw PCM
            return b"".join(bytes(f.to_ndarray().astype(np.int16).tobytes()) for f in frames)
        for frame in frames:
            for resampled in self._resampler.resample(frame):
                self._mux(resampled)
        return self._pipe.take()

    def _mux(self, frame: av.AudioFrame | None) -> None:
        assert self._stream is not None and self._container is not None
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


class _TempoFilter:
    """FFmpeg's atempo, chained where the speed is beyond one filter's 0.5-2.0."""

    def __init__(self, sample_rate: int, speed: float) -> None:
        self._graph = av.filter.Graph()
        source = self._graph.add_abuffer(format="s16", sample_rate=sample_rate, layout="mono")
        node = source
        for factor in _atempo_factors(speed):
            tempo = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(tempo)
            node = tempo
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()

    def push(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        self._graph.push(frame)
        frames: list[av.AudioFrame] = []
        while True:
            try:
                pulled = self._graph.pull()
                assert isinstance(pulled, av.AudioFrame)
                frames.append(pulled)
            except (av.error.BlockingIOError, av.error.EOFError):
                return frames


def _atempo_factors(speed: float) -> list[float]:
    factors = []
    while speed > _ATEMPO_RANGE[1]:
        factors.append(_ATEMPO_RANGE[1])
        speed /= _ATEMPO_RANGE[1]
    while speed < _ATEMPO_RANGE[0]:
        factors.append(_ATEMPO_RANGE[0])
        speed /= _ATEMPO_RANGE[0]
    return [*factors, speed]


def _frame(samples: np.ndarray, sample_rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = sample_rate
    return frame


async def sse_events(audio: AsyncGenerator[bytes, None]) -> AsyncGenerator[str, None]:
    """OpenAI's speech SSE: speech.audio.delta events with base64 audio, then speech.audio.done."""
    async with aclosing(audio):  # type: ignore[type-var]
        async for data in audio:
            if data:
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    yield _event(
        {"type": "speech.audio.done", "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
    )


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"

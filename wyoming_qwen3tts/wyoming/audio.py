"""PCM as Wyoming audio events: audio-start, audio-chunks of bounded size with timestamps, audio-stop.

One AudioFramer frames one response; a timestamp is milliseconds from the response's first sample.
"""

from __future__ import annotations

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Eventable


class AudioFramer:
    """Frames one response's whole-sample PCM, chunk by chunk as it comes."""

    def __init__(self, rate: int, width: int, channels: int, samples_per_chunk: int) -> None:
        self.rate, self.width, self.channels = rate, width, channels
        self.samples_per_chunk = samples_per_chunk
        self.samples = 0  # samples framed so far
        self.started = False

    def audio(self, pcm: bytes) -> list[Eventable]:
        """audio-start before the first audio, then pcm as audio-chunks of at most samples_per_chunk."""
        events = self._start()
        sample_bytes = self.width * self.channels
        step = self.samples_per_chunk * sample_bytes
        for start in range(0, len(pcm), step):
            events.append(
                AudioChunk(
                    rate=self.rate,
                    width=self.width,
                    channels=self.channels,
                    audio=pcm[start : start + step],
                    timestamp=self._milliseconds(self.samples + start // sample_bytes),
                )
            )
        self.samples += len(pcm) // sample_bytes
        return events

    def end(self) -> list[Eventable]:
        """audio-stop (after an audio-start, for a response without audio)."""
        return [*self._start(), AudioStop(timestamp=self._milliseconds(self.samples))]

    def _start(self) -> list[Eventable]:
        if self.started:
            return []
        self.started = True
        return [AudioStart(rate=self.rate, width=self.width, channels=self.channels, timestamp=0)]

    def _milliseconds(self, samples: int) -> int:
        return samples * 1000 // self.rate

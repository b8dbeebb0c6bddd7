"""Reference recordings uploaded to the voice studio: recognised, decoded in a child process, bounded.

An upload is whatever a browser sends, so nothing in it is trusted. Its container is recognised from its
first bytes (WAV, FLAC, Ogg, MP3, ADTS AAC, WebM/Matroska, MP4/M4A: what people record and what browsers'
MediaRecorder makes) and FFmpeg is told that format, never left to probe: probing would reach demuxers
such as HLS playlists that open other files. Decoding runs in a child process (this module run as a
decode_child.py) with a CPU and memory limit and a wall-clock timeout, so a file made to hang or to exhaust a
decoder costs one killed child, never the server. The child stops as soon as the audio runs longer
than the limit, which defeats a small file that claims hours of audio. What comes back is mono float
PCM at 24 kHz, the rate the server speaks and saves at.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import sys
import wave
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import decode_child
from .decode_child import SAMPLE_RATE

FRAME_SECONDS = 0.05  # the energy frames a window is chosen in
DECODING_AT_ONCE = 2
DECODED_KEPT = 2  # the last uploads decoded (or refused), by content


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be; GET /v1/studio tells the page."""

    max_bytes: int = 20 * 2**20
    min_seconds: int = 3  # of the part a voice is made of
    max_seconds: int = 15
    max_upload_seconds: int = 120  # of the whole recording the part is chosen from
    min_rate: int = 8000
    max_rate: int = 192000
    decode_timeout: float = 20.0


class UploadError(Exception):
    """An upload refused; status is the HTTP status (400, or 413 when it is too large), param the field."""

    def __init__(self, message: str, status: int = 400, param: str = "audio") -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class Decoded:
    """An upload decoded: mono float32 samples at SAMPLE_RATE, and the rate it was recorded at."""

    samples: np.ndarray
    source_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


FORMATS_SAID = "wav, flac, ogg, mp3, aac, webm or m4a"


def container_format(data: bytes) -> str | None:
    """FFmpeg's demuxer for an upload, recognised from its first bytes; None if it is no audio we take."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # WebM too
    if data[4:8] == b"ftyp":
        return "mov"  # MP4, M4A
    if data[:3] == b"ID3":
        return "mp3"
    if len(data) >= 2 and data[0] == 0xFF:
        if data[1] & 0xF6 == 0xF0:
            return "aac"  # ADTS: sync word, layer 0
        if data[1] & 0xE0 == 0xE0 and data[1] & 0x06:
            return "mp3"  # MPEG audio frame sync, layer I to III
    return None


class Decoder:
    """Decodes uploads in child processes, a few at a time, keeping the last few results."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(DECODING_AT_ONCE)
        self._kept: OrderedDict[str, Decoded | UploadError] = OrderedDict()

    async def decode(self, data: bytes) -> Decoded:
        limits = self.limits
        if not data:
            raise UploadError("The upload is empty; send a recording (" + FORMATS_SAID + ")")
        if len(data) > limits.max_bytes:
            raise UploadError(f"The upload is larger than {limits.max_bytes // 2**20} MB", 413)
        container = container_format(data)
        if container is None:
            raise UploadError(f"The upload is not audio this server reads; send {FORMATS_SAID}")
        key = hashlib.sha256(data).hexdigest()
        if key not in self._kept:
            async with self._slots:
                try:
                    self._kept[key] = await self._in_child(data, container)
                except UploadError as err:  # kept too: the page sends one file to clip, preview and save
                    self._kept[key] = err
            while len(self._kept) > DECODED_KEPT:
                self._kept.popitem(last=False)
        self._kept.move_to_end(key)
        outcome = self._kept[key]
        if isinstance(outcome, UploadError):
            raise UploadError(str(outcome), outcome.status, outcome.param)
        return outcome

    async def _in_child(self, data: bytes, container: str) -> Decoded:
        limits = self.limits
        arguments = [
            container,
            str(limits.max_upload_seconds * SAMPLE_RATE),
            str(limits.min_rate),
            str(limits.max_rate),
            str(int(limits.decode_timeout) + 1),
        ]
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            decode_child.__name__,
            *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=environment,
        )
        try:
            output, _ = await asyncio.wait_for(child.communicate(data), limits.decode_timeout)
        except asyncio.TimeoutError:
            raise UploadError(
                f"The upload took longer than {limits.decode_timeout:g} s to decode; send {FORMATS_SAID}"
            ) from None
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                with contextlib.suppress(Exception):
                    await child.wait()
        header, _, pcm = output.partition(b"\n")
        try:
            said = json.loads(header)
        except ValueError:
            said = {"error": f"the decoder stopped (exit status {child.returncode})"}
        if not isinstance(said, dict) or "rate" not in said:
            raise UploadError(f"The upload cannot be decoded: {said.get('error')}; send {FORMATS_SAID}")
        samples = np.frombuffer(pcm[: len(pcm) // 4 * 4], dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(samples)):
            samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        return Decoded(samples, int(said["rate"]))


def window(decoded: Decoded, limits: UploadLimits, start: float | None, end: float | None) -> np.ndarray:
    """The part of an upload a voice is made of: start to end (seconds), or the whole of a short one."""
    duration = decoded.duration
    if duration < limits.min_seconds:
        raise UploadError(
            f"The recording is {duration:.1f} s long; a voice needs {limits.min_seconds} to "
            f"{limits.max_seconds} s of clear speech"
        )
    if start is None and end is None and duration > limits.max_seconds:
        best = suggest(decoded, limits)
        raise UploadError(
            f"The recording is {duration:.1f} s long; a voice is made of {limits.min_seconds} to "
            f"{limits.max_seconds} s of it: send start and end (in seconds; suggested "
            f"{best[0]:.2f} to {best[1]:.2f})"
        )
    first = 0.0 if start is None else start
    last = duration if end is None else end
    if not (np.isfinite(first) and np.isfinite(last)) or first < 0 or last <= first or last > duration + 0.05:
        raise UploadError(
            f"start and end must satisfy 0 <= start < end <= {duration:.2f} (seconds)",
            param="start" if start is not None and not 0 <= start < duration else "end",
        )
    last = min(last, duration)
    length = last - first
    if not limits.min_seconds - 0.01 <= length <= limits.max_seconds + 0.01:
        raise UploadError(
            f"The chosen part is {length:.1f} s long; a voice needs {limits.min_seconds} to "
            f"{limits.max_seconds} s of clear speech",
            param="end",
        )
    return decoded.samples[round(first * SAMPLE_RATE) : round(last * SAMPLE_RATE)]


def suggest(decoded: Decoded, limits: UploadLimits) -> tuple[float, float]:
    """The best min..max-second part of a recording to clone: the most speech, silence trimmed off.

    Speech is told from silence by energy: a 50 ms frame counts as voiced when it is within 26 dB of the
    recording's loud frames. A long recording's window is the one with the most voiced frames.
    """
    hop = round(FRAME_SECONDS * SAMPLE_RATE)
    frames = len(decoded.samples) // hop
    duration = decoded.duration
    if frames < 2 or duration <= limits.min_seconds:
        return 0.0, round(duration, 2)
    energy = np.sqrt(np.mean(decoded.samples[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    threshold = max(float(np.percentile(energy, 95)) * 0.05, 1e-4)
    voiced = energy > threshold
    longest = round(limits.max_seconds / FRAME_SECONDS)
    shortest = round(limits.min_seconds / FRAME_SECONDS)
    first, last = 0, frames  # frame range, end exclusive
    if frames > longest:
        totals = np.concatenate([[0], np.cumsum(voiced)])
        sums = totals[longest:] - totals[:-longest]
        first = int(np.argmax(sums))
        last = first + longest
    inside = np.flatnonzero(voiced[first:last])
    if inside.size:
        margin = round(0.2 / FRAME_SECONDS)
        first, last = (
            max(first + int(inside[0]) - margin, first),
            min(first + int(inside[-1]) + 1 + margin, last),
        )
    if last - first < shortest:  # too little left: grow it evenly, within the recording
        grow = shortest - (last - first)
        first = max(0, first - grow // 2)
        last = min(frames, first + shortest)
        first = max(0, last - shortest)
    end = duration if last == frames else last * FRAME_SECONDS
    return round(first * FRAME_SECONDS, 2), round(min(end, duration), 2)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono WAV of float samples: the file a saved voice keeps, and a preview's response."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return pcm_wav(pcm, rate)


def pcm_wav(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono PCM as a WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm)
    return buffer.getvalue()

"""A speech request and its outcome, whatever front end brought it: what was asked, what came of it.

The error codes a client gets back (in a Wyoming `error` event or an HTTP error body) are defined here once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .text import Part, SentenceBuffer

UNKNOWN_VOICE = "unknown-voice"
UNSUPPORTED_LANGUAGE = "unsupported-language"
TEXT_TOO_LONG = "text-too-long"
INVALID_SSML = "invalid-ssml"
INVALID_EVENT = "invalid-event"
INVALID_AUDIO = "invalid-audio"  # reference audio of a clone that cannot be read
CANNOT_CLONE = "cannot-clone"
SYNTHESIS_FAILED = "synthesis-failed"
BUSY = "busy"

TEXT_FORMATS = ("text", "ssml")


class RequestError(Exception):
    """A request this server refuses (before or while speaking it); the message and code go to the client."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class EngineError(Exception):
    """A request the engine cannot serve (a voice it cannot build, audio it cannot read), told the client."""

    def __init__(self, message: str, code: str = SYNTHESIS_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- what was asked -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceRequest:
    """The voice a request asks for; any part may be missing."""

    name: str | None = None
    speaker: str | None = None
    language: str | None = None
    instructions: str | None = None  # a style instruction for this request (HTTP only)


@dataclass(frozen=True)
class SpeechRequest:
    """One request to speak: its voice, who asked, and its text, whole or (text None) arriving in pieces."""

    voice: VoiceRequest = VoiceRequest()
    text: str | None = None  # None: fed to the Speech piece by piece, then closed (a Wyoming stream)
    text_format: str = "text"  # one of TEXT_FORMATS
    client: str = "-"  # who asked, for the log line ("wyoming 127.0.0.1:50312", "http ...")


NOT_READY = object()  # TextStream.ready_part: nothing to take yet


class TextStream:
    """A request's text as it arrives, and the parts to speak in order, each as soon as it is complete.

    Plain text is cut into sentences as it comes; SSML is kept whole until the end (a document is read
    at once), when its parts are added. The end is queued too, as None, so `waiting` counts it.
    """

    def __init__(self, text_format: str = "text") -> None:
        self.ssml = check_text_format(text_format) == "ssml"
        self.chars = 0  # characters fed so far
        self.ready_at: float | None = None  # when its first part was ready to speak
        self._sentences = SentenceBuffer()
        self._document: list[str] = []  # an SSML stream's pieces
        self._parts: asyncio.Queue[Part | None] = asyncio.Queue()

    @property
    def waiting(self) -> int:
        """Parts ready and not yet taken to be spoken, the end included once closed."""
        return self._parts.qsize()

    @property
    def document(self) -> str:
        """The SSML fed so far."""
        return "".join(self._document)

    def feed(self, text: str) -> None:
        self.chars += len(text)
        if self.ssml:
            self._document.append(text)
        else:
            self.add(self._sentences.feed(text))

    def add(self, parts: Iterable[Part]) -> None:
        for part in parts:
            if self.ready_at is None:
                self.ready_at = time.monotonic()
            self._parts.put_nowait(part)

    def close(self) -> None:
        """The text is complete: its last sentence is ready, then the end."""
        self.add(self._sentences.flush())
        self._parts.put_nowait(None)

    async def next_part(self) -> Part | None:
        """The next part to speak once it is ready; None at the end."""
        return await self._parts.get()

    def ready_part(self) -> Part | None | object:
        """The next part if it is ready now (None at the end), else NOT_READY."""
        try:
            return self._parts.get_nowait()
        except asyncio.QueueEmpty:
            return NOT_READY


def check_text_format(text_format: Any) -> str:
    """The request's text format, if it is one of TEXT_FORMATS."""
    if text_format not in TEXT_FORMATS:
        raise RequestError(
            f"text_format {text_format!r} is not supported; send {' or '.join(TEXT_FORMATS)}", INVALID_EVENT
        )
    return str(text_format)


def describe_client(peer: Any, protocol: str) -> str:
    """'wyoming 127.0.0.1:50312' from a socket's peer name (a tuple, a path or None)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{protocol} {peer[0]}:{peer[1]}"
    return f"{protocol} {peer or 'local'}"


# -- what came of it ------------------------------------------------------------------------------


@dataclass
class Utterance:
    """One response from its first to its last sample, and the numbers of its log line."""

    voice_name: str
    language: str
    client: str = "-"
    language_requested: bool = False  # the request named one: an SSML xml:lang does not override it
    instructions_ignored: bool = False  # the request's instructions could not be followed
    chars: int = 0  # characters of the sentences given to the engine
    samples: int = 0  # whole samples handed to the front end so far
    pcm_remainder: bytes = b""  # a trailing half sample, kept for the next engine chunk
    text_ready_at: float | None = None  # when its first sentence was ready to speak
    first_audio_at: float | None = None
    synthesis_seconds: float = 0.0  # time spent waiting for the engine
    sample_rate: int = 24000
    # When a player that starts at the first audio and plays in real time (pausing whenever it runs dry)
    # will have played everything handed out so far: what the listener has in hand (buffered_seconds).
    heard_until: float = 0.0

    def whole_samples(self, pcm: bytes, sample_bytes: int) -> bytes:
        """The whole samples of pcm (after any half sample left over), counted as handed out."""
        data = self.pcm_remainder + bytes(pcm)
        whole = len(data) - len(data) % sample_bytes
        data, self.pcm_remainder = data[:whole], data[whole:]
        if whole:
            now = time.monotonic()
            if self.first_audio_at is None:
                self.first_audio_at = now
            self.samples += whole // sample_bytes
            self.heard_until = max(self.heard_until, now) + whole / sample_bytes / self.sample_rate
        return data

    def buffered_seconds(self) -> float:
        """Seconds of audio the listener has in hand and not yet heard, as a real-time player would."""
        return max(0.0, self.heard_until - time.monotonic())

    def log_line(self, outcome: str, sample_rate: int) -> str:
        """Who, voice, language, size, first audio, real-time factor and how it ended, on one line."""
        audio_seconds = self.samples / sample_rate
        if self.first_audio_at is None or self.text_ready_at is None:
            first_audio = "-"
        else:
            first_audio = f"{(self.first_audio_at - self.text_ready_at) * 1000:.0f}"
        rtf = f"{self.synthesis_seconds / audio_seconds:.2f}" if audio_seconds else "-"
        return (
            f"request client={self.client} voice={self.voice_name} language={self.language} "
            f"chars={self.chars} audio_s={audio_seconds:.2f} first_audio_ms={first_audio} rtf={rtf} "
            f"outcome={outcome}"
        )


def outcome_of(error: BaseException | None) -> str:
    """How a response ended: ok, dropped (the client left), cancelled, or error:<code>."""
    if error is None:
        return "ok"
    if isinstance(error, RequestError | EngineError):
        return f"error:{error.code}"
    if isinstance(error, ConnectionError):
        return "dropped"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return f"error:{SYNTHESIS_FAILED}"


def short_failure(err: Exception) -> str:
    """The message a client gets for an unexpected failure."""
    return f"Synthesis failed: {type(err).__name__}: {err}"[:200]

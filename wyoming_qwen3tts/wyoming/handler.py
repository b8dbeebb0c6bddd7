"""The Wyoming event handler, one per connection: events in, calls to the speech service, audio events out.

describe is answered at once; synthesize, or a synthesize-start ... -chunk ... -stop stream, becomes one
Speech, spoken in order after the connection's earlier ones while the handler keeps reading the socket.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from .. import __version__
from ..requests import BUSY, INVALID_EVENT, RequestError, SpeechRequest, VoiceRequest, check_text_format
from ..service import Speech, SpeechService
from .audio import AudioFramer
from .connection import Connection, Connections
from .info import describe

_LOGGER = logging.getLogger(__name__)

# Error codes only a Wyoming client gets (requests.py has the others).
NO_STREAM = "no-stream"
STREAM_ALREADY_OPEN = "stream-already-open"


@dataclass(frozen=True, kw_only=True)
class HandlerOptions:
    """Server-wide Wyoming settings every connection's handler shares."""

    samples_per_chunk: int = 1024  # at most this many samples per audio-chunk event
    max_pending_jobs: int = 200  # sentences (and pauses, ends) one connection may have waiting
    write_timeout: float = 30.0  # seconds a write may wait for a client that stopped reading; 0: forever
    idle_timeout: float = 300.0  # seconds a silent connection with nothing to say stays open; 0: forever
    program_name: str = "qwen3-tts"
    version: str = __version__


class Qwen3TTSEventHandler(Connection):
    """Serves one client connection: describe, one-shot and streamed synthesis."""

    def __init__(
        self,
        service: SpeechService,
        options: HandlerOptions,
        *args: Any,
        connections: Connections | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            connections=connections,
            idle_timeout=options.idle_timeout,
            write_timeout=options.write_timeout,
            **kwargs,
        )
        self.service = service
        self.options = options
        self._stream: Speech | None = None  # the open synthesize-start ... synthesize-stop stream
        self._speeches: list[Speech] = []  # accepted and not yet spoken to their end, in order

    @property
    def receiving(self) -> bool:
        return self._stream is not None

    @property
    def speaking(self) -> bool:
        return not self.closing and any(speech.speaking for speech in self._speeches)

    async def dispatch(self, event: Event) -> None:
        if not isinstance(event.data, dict):
            raise RequestError(f"{event.type} event with malformed data", INVALID_EVENT)
        if Describe.is_type(event.type):
            await self.send(describe(self.service, self.options.program_name, self.options.version))
        elif Synthesize.is_type(event.type):
            if self._stream is not None:
                # Home Assistant repeats the whole streamed text this way for older servers.
                _LOGGER.debug("Ignoring synthesize inside a stream: its text comes in synthesize-chunks")
            else:
                self._start_one_shot(event.data)
        elif SynthesizeStart.is_type(event.type):
            self._start_stream(event.data)
        elif SynthesizeChunk.is_type(event.type):
            self._continue_stream(event.data)
        elif SynthesizeStop.is_type(event.type):
            self._stop_stream()
        elif Ping.is_type(event.type):
            await self.send(Pong(text=Ping.from_event(event).text))
        else:
            _LOGGER.debug("Ignoring %s event", event.type)

    def _start_one_shot(self, data: dict[str, Any]) -> None:
        text = _text_of(data, "synthesize")
        text_format = _text_format_of(data)
        request = SpeechRequest(_voice_request_of(data), text, text_format, self.client)
        speech = self.service.speak(request)
        utterance = speech.utterance
        _LOGGER.debug(
            "Synthesize %d chars, voice %s, language %s: %r",
            len(text),
            utterance.voice_name,
            utterance.language,
            text,
        )
        self._accept(speech, streamed=False)

    def _start_stream(self, data: dict[str, Any]) -> None:
        if self._stream is not None:
            raise RequestError("A synthesis stream is already open", STREAM_ALREADY_OPEN)
        text_format = _text_format_of(data)
        speech = self.service.speak(SpeechRequest(_voice_request_of(data), None, text_format, self.client))
        self._stream = speech
        _LOGGER.debug(
            "Synthesis stream started, voice %s, language %s",
            speech.utterance.voice_name,
            speech.utterance.language,
        )
        self._accept(speech, streamed=True)

    def _continue_stream(self, data: dict[str, Any]) -> None:
        stream = self._open_stream("synthesize-chunk")
        text = _text_of(data, "synthesize-chunk")
        stream.feed(text)
        _LOGGER.debug("Synthesize chunk: %r", text)
        self._check_waiting()

    def _stop_stream(self) -> None:
        stream = self._open_stream("synthesize-stop")
        self._stream = None
        stream.close()
        self._check_waiting()

    def _open_stream(self, event_type: str) -> Speech:
        if self._stream is None:
            raise RequestError(f"{event_type} without synthesize-start", NO_STREAM)
        return self._stream

    # -- responses ------------------------------------------------------------------------------

    def _accept(self, speech: Speech, streamed: bool) -> None:
        """Speak speech after the connection's earlier requests."""
        self._speeches.append(speech)
        self._check_waiting()
        self.queue(partial(self._respond, speech, streamed))

    def _check_waiting(self) -> None:
        """The --max-queued-sentences bound: sentences (and pauses, ends) ready and not yet begun."""
        if sum(speech.waiting for speech in self._speeches) > self.options.max_pending_jobs:
            raise RequestError(
                f"More than {self.options.max_pending_jobs} sentences are waiting on this connection; "
                "wait for the audio before sending more",
                BUSY,
            )

    async def _respond(self, speech: Speech, streamed: bool) -> None:
        """audio-start, the audio as the engine makes it, audio-stop (then synthesize-stopped: a stream)."""
        service = self.service
        framer = AudioFramer(
            service.sample_rate, service.sample_width, service.channels, self.options.samples_per_chunk
        )
        try:
            async with speech:
                async for pcm in speech:
                    self.last_active = time.monotonic()
                    for event in framer.audio(pcm):
                        await self.send(event)
                for event in framer.end():
                    await self.send(event)
                if streamed:
                    await self.send(SynthesizeStopped())
        finally:
            self._speeches.remove(speech)


def _voice_request_of(data: dict[str, Any]) -> VoiceRequest:
    # Read the raw dict: wyoming's SynthesizeVoice.from_dict drops the language when a name is given.
    voice = data.get("voice")
    if not isinstance(voice, dict):
        return VoiceRequest()
    return VoiceRequest(
        name=_optional_text(voice, "name"),
        speaker=_optional_text(voice, "speaker"),
        language=_optional_text(voice, "language"),
    )


def _optional_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"voice {key} must be a string", INVALID_EVENT)
    return value.strip() if value else None


def _text_format_of(data: dict[str, Any]) -> str:
    return check_text_format(data.get("text_format") or "text")


def _text_of(data: dict[str, Any], event_type: str) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise RequestError(f"{event_type} event without text", INVALID_EVENT)
    return text

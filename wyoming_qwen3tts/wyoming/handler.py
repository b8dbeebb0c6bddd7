"""The Wyoming event handler: one instance per client connection.

It answers describe with the engine's voices and turns synthesize requests,
one-shot or streamed (synthesize-start, -chunk..., -stop), into audio events.
Text is cut into sentences and each sentence is synthesized on the shared
InferenceQueue as soon as it is complete, so the first sentence plays while
later ones are still being generated or have not even arrived yet.

The handler never waits for synthesis itself: requests become jobs in a
per-connection queue that a background task (the "speaker") works through
in order, writing the audio events. Meanwhile the handler keeps reading the
socket, so streamed text and describe requests are taken in at once.

After any error event the connection is closed, because some Home Assistant
versions ignore error events and would otherwise wait for audio forever.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, Eventable
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from .. import __version__
from ..engine.seams import Engine
from ..languages import AUTO, bcp47_codes
from ..requests import INVALID_EVENT, SYNTHESIS_FAILED, EngineError, RequestError
from ..service import (
    Part,
    Speech,
    SpeechOptions,
    Utterance,
    VoiceRequest,
    check_text_format,
    describe_client,
    find_voice,
    read_ssml,
    short_failure,
)
from ..text import SentenceBuffer
from ..voices.voice import Voice
from ..worker import InferenceQueue
from .wire import Idle, WireError, read_event

# InferenceQueue is re-exported: the server wiring builds one and passes it to every handler.
__all__ = ["HandlerOptions", "InferenceQueue", "Qwen3TTSEventHandler", "RequestError", "find_voice"]

_LOGGER = logging.getLogger(__name__)

ATTRIBUTION = Attribution(
    name="Qwen team, Alibaba Cloud (Qwen3-TTS)", url="https://github.com/QwenLM/Qwen3-TTS"
)
PROGRAM_DESCRIPTION = "Qwen3-TTS text to speech on the CPU"

# Wyoming-only error codes (the speech layer has the others).
NO_STREAM = "no-stream"
STREAM_ALREADY_OPEN = "stream-already-open"


@dataclass(frozen=True, kw_only=True)
class HandlerOptions:
    """Server-wide settings every connection's handler shares."""

    default_voice: str | None = None  # None: the engine's first voice
    default_language: str = AUTO  # "auto" or a model language name ("english")
    samples_per_chunk: int = 1024  # at most this many samples per audio-chunk event
    max_text_chars: int = 5000  # longer requests (or streams) are refused
    normalize: bool = True  # numbers, dates, money, markup ... written out before synthesis
    max_pending_jobs: int = 200  # sentences (and pauses, ends) one connection may have waiting
    write_timeout: float = 30.0  # seconds a write may wait for a client that stopped reading; 0: forever
    idle_timeout: float = (
        300.0  # seconds a connection may sit with nothing sent and nothing to say; 0: forever
    )
    program_name: str = "qwen3-tts"
    version: str = __version__

    def speech_options(self) -> SpeechOptions:
        return SpeechOptions(
            default_voice=self.default_voice,
            default_language=self.default_language,
            max_text_chars=self.max_text_chars,
            normalize=self.normalize,
        )


@dataclass
class _Response:
    """One audio response, from its audio-start to its audio-stop."""

    utterance: Utterance
    audio_started: bool = False


@dataclass
class _Stream:
    """An open synthesize-start ... synthesize-stop stream."""

    response: _Response
    sentences: SentenceBuffer = field(default_factory=SentenceBuffer)
    chars: int = 0
    ssml_parts: list[str] | None = None  # an SSML stream is read whole, at synthesize-stop


_Job = Callable[[], Awaitable[None]]

BUSY = "busy"
BODY_TIMEOUT = 30.0  # seconds the rest of an event may take once its header line arrived
SEND_BUFFER_BYTES = 256 * 1024  # about 5 s of 24 kHz 16-bit audio


class Connections:
    """The open connections of one server: a bound on their number, and what a shutdown waits for.

    The bound never locks out a well-behaved client: when it is reached, the connections that sit idle
    (nothing being spoken, no stream open) make room, longest idle first. Only when every open
    connection is working does a new one get `busy`.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit  # 0: no bound
        self.open: set[Qwen3TTSEventHandler] = set()

    def admit(self, handler: Qwen3TTSEventHandler) -> bool:
        """Count handler as open, closing idle connections to make room; False if all are working."""
        if self.limit and len(self.open) >= self.limit:
            idle = sorted((h for h in self.open if not h.busy), key=lambda h: h.last_active)
            excess = len(self.open) - self.limit + 1
            if len(idle) < excess:
                return False
            for evicted in idle[:excess]:
                self.open.discard(evicted)
                evicted.evict()
        self.open.add(handler)
        return True

    def busy(self) -> list[Qwen3TTSEventHandler]:
        """Connections with audio still to send (or a stream still open)."""
        return [handler for handler in self.open if handler.busy]


class Qwen3TTSEventHandler(AsyncEventHandler):
    """Serves one client connection: describe, one-shot and streamed synthesis."""

    def __init__(
        self,
        engine: Engine,
        options: HandlerOptions,
        inference: InferenceQueue,
        *args: Any,
        connections: Connections | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine
        self.options = options
        self.connections = connections if connections is not None else Connections()
        self.speech = Speech(engine, options.speech_options(), inference)
        self._client = describe_client(self.writer.get_extra_info("peername"), "wyoming")
        sock = self.writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A bounded send buffer: a client that stops reading blocks our writes (and meets
            # --write-timeout) after a few seconds of audio, not after megabytes of it.
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self._stream: _Stream | None = None
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._speaker: asyncio.Task[None] | None = None
        self._closing = False  # after an error or stop(): queued work is dropped
        self._speaking = False  # a job is running
        self.last_active = time.monotonic()  # the last event read or audio written; idle ones make room

    # -- connection life ---------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while this connection has audio to send or a stream open (a shutdown waits for it)."""
        return not self._closing and (self._stream is not None or self.speaking)

    @property
    def speaking(self) -> bool:
        """True while audio is being made or waits to be (a silent client is not idle then)."""
        return not self._closing and (self._speaking or not self._jobs.empty())

    async def run(self) -> None:
        """Serve the connection; unreadable input or a lost client ends only this connection."""
        if not self.connections.admit(self):
            limit = self.connections.limit
            _LOGGER.warning(
                "Refusing a connection from %s: all %d open connections are speaking", self._client, limit
            )
            await self._fail(
                f"The server is speaking on all of its {limit} connections; try again later", BUSY
            )
            self.writer.close()
            return
        try:
            await self._read_events()
        except ConnectionError as err:
            _LOGGER.debug("Connection lost: %s", err)
        except Exception as err:  # e.g. JSON that is not an event: wyoming raises instead of returning None
            _LOGGER.warning("Closing a connection that sent unreadable data: %r", err)
            _LOGGER.debug("Unreadable data", exc_info=True)
        finally:
            self.connections.open.discard(self)

    async def _read_events(self) -> None:
        """Read events until the client closes, an event is refused, or the connection sits idle.

        Idle means no event for --idle-timeout while nothing is being spoken: an open stream
        whose client went silent counts as idle too.
        """
        self._is_running = True
        try:
            while self._is_running:
                try:
                    event = await read_event(
                        self.reader, self.options.idle_timeout, BODY_TIMEOUT, lambda: self.speaking
                    )
                except Idle:
                    if self.speaking:
                        continue
                    _LOGGER.info("Closing %s: idle for %.0f s", self._client, self.options.idle_timeout)
                    break
                except WireError as err:
                    _LOGGER.warning("Closing %s: %s", self._client, err)
                    await self._fail(str(err), err.code)
                    break
                self.last_active = time.monotonic()
                if event is None or not await self.handle_event(event):
                    break
        finally:
            await self.disconnect()
            self.writer.close()

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (see Connections.admit)."""
        _LOGGER.info(
            "Closing %s to make room for a new connection: idle for %.0f s",
            self._client,
            time.monotonic() - self.last_active,
        )
        self._is_running = False
        self._closing = True
        self.writer.close()  # what was written is still sent, then the close
        self.reader.feed_eof()  # the read loop sees the end at once

    async def stop(self) -> None:
        """Close the connection and drop its queued work."""
        self._closing = True
        if self._speaker is not None and self._speaker is not asyncio.current_task():
            self._speaker.cancel()
        await super().stop()

    async def disconnect(self) -> None:
        """Called once the client is gone or the connection is being closed.

        A client that only closed its sending side still gets the audio it
        asked for; a stream left open or a closing connection is abandoned.
        """
        speaker = self._speaker
        if speaker is None:
            return
        if self._closing or self._stream is not None:
            if self._stream is not None:
                _LOGGER.debug("Client left in the middle of a stream")
            self._closing = True
            speaker.cancel()
        # The end of the queue, also for a speaker that missed the cancel (asyncio.wait_for in Python
        # 3.11 swallows a cancel that arrives as the write it waits for completes): it stops there.
        self._jobs.put_nowait(None)
        await asyncio.wait([speaker])

    # -- events ---------------------------------------------------------------

    async def handle_event(self, event: Event) -> bool:
        """Take one event; False closes the connection."""
        if self._closing:
            return False
        try:
            await self._dispatch(event)
        except (RequestError, EngineError) as err:
            await self._fail(str(err), err.code)
            return False
        except ConnectionError as err:
            _LOGGER.debug("Connection lost: %s", err)
            return False
        except Exception as err:
            _LOGGER.exception("Failed to handle %s event", event.type)
            await self._fail(short_failure(err), SYNTHESIS_FAILED)
            return False
        return True

    async def _dispatch(self, event: Event) -> None:
        if not isinstance(event.data, dict):
            raise RequestError(f"{event.type} event with malformed data", INVALID_EVENT)
        if Describe.is_type(event.type):
            await self._send(self._info())
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
            await self._send(Pong(text=Ping.from_event(event).text))
        else:
            _LOGGER.debug("Ignoring %s event", event.type)

    def _start_one_shot(self, data: dict[str, Any]) -> None:
        text = _text_of(data, "synthesize")
        utterance, parts = self.speech.prepare(
            text, _text_format_of(data), _voice_request_of(data), self._client
        )
        _LOGGER.debug(
            "Synthesize %d chars, voice %s, language %s: %r",
            len(text),
            utterance.voice.name,
            utterance.language,
            text,
        )
        response = _Response(utterance)
        self._queue_parts(response, parts)
        self._queue(partial(self._finish, response, streamed=False))

    def _start_stream(self, data: dict[str, Any]) -> None:
        if self._stream is not None:
            raise RequestError("A synthesis stream is already open", STREAM_ALREADY_OPEN)
        text_format = _text_format_of(data)
        utterance = self.speech.open(_voice_request_of(data), client=self._client)
        self._stream = _Stream(_Response(utterance), ssml_parts=[] if text_format == "ssml" else None)
        _LOGGER.debug(
            "Synthesis stream started, voice %s, language %s", utterance.voice.name, utterance.language
        )

    def _continue_stream(self, data: dict[str, Any]) -> None:
        stream = self._open_stream("synthesize-chunk")
        text = _text_of(data, "synthesize-chunk")
        stream.chars += len(text)
        self.speech.check_length(stream.chars)
        _LOGGER.debug("Synthesize chunk: %r", text)
        if stream.ssml_parts is not None:
            stream.ssml_parts.append(text)
            return
        self._queue_parts(stream.response, stream.sentences.feed(text))

    def _stop_stream(self) -> None:
        stream = self._open_stream("synthesize-stop")
        self._stream = None
        utterance = stream.response.utterance
        if stream.ssml_parts is not None:
            document = read_ssml("".join(stream.ssml_parts))
            if document.language and not utterance.language_requested:  # known only now
                utterance.language = self.speech.resolve_language(utterance.voice, document.language)
            self._queue_parts(stream.response, self.speech.ssml_parts(utterance, document))
        self._queue_parts(stream.response, stream.sentences.flush())
        self._queue(partial(self._finish, stream.response, streamed=True))

    def _open_stream(self, event_type: str) -> _Stream:
        if self._stream is None:
            raise RequestError(f"{event_type} without synthesize-start", NO_STREAM)
        return self._stream

    # -- info -------------------------------------------------------------------

    def _info(self) -> Info:
        all_languages = self.engine.languages()
        voices = [
            TtsVoice(
                name=voice.name,
                description=voice.description or voice.name,
                attribution=ATTRIBUTION,
                installed=True,
                version=None,
                languages=bcp47_codes(voice.languages or all_languages),
                speakers=_speakers(voice),
            )
            for voice in self.engine.voices()
        ]
        program = TtsProgram(
            name=self.options.program_name,
            description=PROGRAM_DESCRIPTION,
            attribution=ATTRIBUTION,
            installed=True,
            version=self.options.version,
            voices=voices,
            supports_synthesize_streaming=True,
        )
        return Info(tts=[program])

    # -- the speaker: synthesis jobs in order, off the read loop ---------------

    def _queue(self, job: _Job) -> None:
        if self._jobs.qsize() >= self.options.max_pending_jobs:
            raise RequestError(
                f"More than {self.options.max_pending_jobs} sentences are waiting on this connection; "
                "wait for the audio before sending more",
                BUSY,
            )
        if self._speaker is None:
            self._speaker = asyncio.create_task(self._work_through_jobs(), name="qwen3tts speaker")
        self._jobs.put_nowait(job)

    def _queue_parts(self, response: _Response, parts: Iterable[Part]) -> None:
        for part in parts:
            self.speech.mark_text_ready(response.utterance)
            self._queue(partial(self._speak, response, part))

    async def _work_through_jobs(self) -> None:
        while (job := await self._jobs.get()) is not None and not self._closing:
            self._speaking = True
            try:
                await job()
            except ConnectionError as err:
                self._closing = True
                _LOGGER.debug("Connection lost while speaking: %s", err)
                return
            except EngineError as err:
                await self._fail_and_close(str(err), err.code)
                return
            except Exception as err:
                _LOGGER.exception("Synthesis failed")
                await self._fail_and_close(short_failure(err), SYNTHESIS_FAILED)
                return
            finally:
                self._speaking = False

    async def _speak(self, response: _Response, part: Part) -> None:
        """Synthesize one sentence (or pause), writing its audio as the engine produces it."""
        try:
            async with aclosing(self.speech.render(response.utterance, part)) as chunks:
                async for pcm in chunks:
                    await self._send_audio(response, pcm)
        except ConnectionError:
            self.speech.log_finished(response.utterance, "dropped")
            raise
        except Exception:
            self.speech.log_finished(response.utterance, "failed")
            raise

    async def _send_audio(self, response: _Response, pcm: bytes) -> None:
        """Write whole-sample PCM as audio-chunks of at most samples_per_chunk samples."""
        await self._start_audio(response)
        sample_bytes = self.speech.sample_bytes
        # The speech layer has counted these samples already: the first of them is at offset.
        offset = response.utterance.samples - len(pcm) // sample_bytes
        step = self.options.samples_per_chunk * sample_bytes
        self.last_active = time.monotonic()
        for start in range(0, len(pcm), step):
            piece = pcm[start : start + step]
            await self._send(
                AudioChunk(
                    rate=self.engine.sample_rate,
                    width=self.engine.sample_width,
                    channels=self.engine.channels,
                    audio=piece,
                    timestamp=self._milliseconds(offset + start // sample_bytes),
                )
            )

    async def _start_audio(self, response: _Response) -> None:
        if not response.audio_started:
            response.audio_started = True
            await self._send(
                AudioStart(
                    rate=self.engine.sample_rate,
                    width=self.engine.sample_width,
                    channels=self.engine.channels,
                    timestamp=0,
                )
            )

    async def _finish(self, response: _Response, streamed: bool) -> None:
        """End a response: audio-stop, and synthesize-stopped after a stream."""
        await self._start_audio(response)
        await self._send(AudioStop(timestamp=self._milliseconds(response.utterance.samples)))
        if streamed:
            await self._send(SynthesizeStopped())
        self.speech.log_finished(response.utterance)

    def _milliseconds(self, samples: int) -> int:
        return samples * 1000 // self.engine.sample_rate

    # -- writing ---------------------------------------------------------------

    async def _send(self, message: Eventable) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("connection closed")
        if self._closing and not isinstance(message, Error):
            # After an error (or stop) the error is the last event this client gets.
            raise ConnectionAbortedError("connection closing")
        try:
            await asyncio.wait_for(self.write_event(message.event()), self.options.write_timeout or None)
        except asyncio.TimeoutError:
            # The client stopped reading: drop it, so its synthesis and caches are freed.
            _LOGGER.warning("Dropping %s: a write waited %.0f s", self._client, self.options.write_timeout)
            self._closing = True
            self.writer.transport.abort()
            self.reader.feed_eof()
            raise ConnectionAbortedError("client stopped reading") from None

    async def _fail(self, text: str, code: str) -> None:
        """Send an error event; the caller then closes the connection."""
        self._closing = True
        _LOGGER.warning("Sending error %s: %s", code, text)
        with suppress(ConnectionError):
            await self._send(Error(text=text, code=code))

    async def _fail_and_close(self, text: str, code: str) -> None:
        await self._fail(text, code)
        await self.stop()


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


def _speakers(voice: Voice) -> list[TtsVoiceSpeaker] | None:
    # Every voice is one speaker; list it only when it has a name of its own a client could send.
    if voice.speaker and voice.speaker.casefold() != voice.name.casefold():
        return [TtsVoiceSpeaker(name=voice.speaker)]
    return None

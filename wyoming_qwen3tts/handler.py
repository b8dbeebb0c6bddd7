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
import time
from collections.abc import Awaitable, Callable, Sequence
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

from . import __version__
from .engine.base import Engine, EngineError, Voice
from .inference import InferenceQueue
from .languages import AUTO, to_bcp47, to_model_language
from .text import SentenceBuffer, normalize, split_sentences
from .text.ssml import SsmlDocument, SsmlError, parse_ssml

# InferenceQueue is re-exported: the server wiring builds one and passes it to every handler.
__all__ = ["HandlerOptions", "InferenceQueue", "Qwen3TTSEventHandler", "RequestError", "find_voice"]

_LOGGER = logging.getLogger(__name__)

ATTRIBUTION = Attribution(
    name="Qwen team, Alibaba Cloud (Qwen3-TTS)", url="https://github.com/QwenLM/Qwen3-TTS"
)
PROGRAM_DESCRIPTION = "Qwen3-TTS text to speech on the CPU"

# Error codes sent to clients (an EngineError brings its own).
UNKNOWN_VOICE = "unknown-voice"
UNSUPPORTED_LANGUAGE = "unsupported-language"
TEXT_TOO_LONG = "text-too-long"
NO_STREAM = "no-stream"
STREAM_ALREADY_OPEN = "stream-already-open"
INVALID_EVENT = "invalid-event"
SYNTHESIS_FAILED = "synthesis-failed"
INVALID_SSML = "invalid-ssml"
TEXT_FORMATS = ("text", "ssml")


@dataclass(frozen=True, kw_only=True)
class HandlerOptions:
    """Server-wide settings every connection's handler shares."""

    default_voice: str | None = None  # None: the engine's first voice
    default_language: str = AUTO  # "auto" or a model language name ("english")
    samples_per_chunk: int = 1024  # at most this many samples per audio-chunk event
    max_text_chars: int = 5000  # longer requests (or streams) are refused
    normalize: bool = True  # numbers, dates, money, markup ... written out before synthesis
    program_name: str = "qwen3-tts"
    version: str = __version__


class RequestError(Exception):
    """A request this server refuses; the message and code go to the client."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VoiceRequest:
    """What a request's voice object asks for; any part may be missing."""

    name: str | None = None
    speaker: str | None = None
    language: str | None = None


@dataclass
class _Speech:
    """One audio response, from its audio-start to its audio-stop, and the numbers logged at its end."""

    voice: Voice
    language: str
    language_requested: bool = False  # the request named one: an SSML xml:lang does not override it
    chars: int = 0
    samples: int = 0
    audio_started: bool = False
    pcm_remainder: bytes = b""  # a trailing half sample, kept for the next engine chunk
    text_ready_at: float | None = None  # when its first sentence was handed to the speaker
    first_audio_at: float | None = None
    synthesis_seconds: float = 0.0  # time spent waiting for the engine


@dataclass
class _Stream:
    """An open synthesize-start ... synthesize-stop stream."""

    speech: _Speech
    sentences: SentenceBuffer = field(default_factory=SentenceBuffer)
    chars: int = 0
    ssml_parts: list[str] | None = None  # an SSML stream is read whole, at synthesize-stop


_Job = Callable[[], Awaitable[None]]


class Qwen3TTSEventHandler(AsyncEventHandler):
    """Serves one client connection: describe, one-shot and streamed synthesis."""

    def __init__(
        self,
        engine: Engine,
        options: HandlerOptions,
        inference: InferenceQueue,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine
        self.options = options
        self.inference = inference
        self._stream: _Stream | None = None
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._speaker: asyncio.Task[None] | None = None
        self._closing = False  # after an error or stop(): queued work is dropped

    # -- connection life ---------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; unreadable input or a lost client ends only this connection."""
        try:
            await super().run()
        except ConnectionError as err:
            _LOGGER.debug("Connection lost: %s", err)
        except Exception as err:  # e.g. JSON that is not an event: wyoming raises instead of returning None
            _LOGGER.warning("Closing a connection that sent unreadable data: %r", err)
            _LOGGER.debug("Unreadable data", exc_info=True)

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
            speaker.cancel()
        else:
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
            await self._fail(_short_failure(err), SYNTHESIS_FAILED)
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
        self._check_length(len(text))
        request = _voice_request_of(data)
        if _text_format_of(data) == "ssml":
            document = _read_ssml(text)
            speech = self._new_speech(request, document.language)
            self._queue_ssml(speech, document)
            self._queue(partial(self._finish, speech, streamed=False))
            return
        speech = self._new_speech(request)
        _LOGGER.debug(
            "Synthesize %d chars, voice %s, language %s: %r",
            len(text),
            speech.voice.name,
            speech.language,
            text,
        )
        for sentence in split_sentences(text):
            self._queue_sentence(speech, sentence)
        self._queue(partial(self._finish, speech, streamed=False))

    def _start_stream(self, data: dict[str, Any]) -> None:
        if self._stream is not None:
            raise RequestError("A synthesis stream is already open", STREAM_ALREADY_OPEN)
        speech = self._new_speech(_voice_request_of(data))
        self._stream = _Stream(speech, ssml_parts=[] if _text_format_of(data) == "ssml" else None)
        _LOGGER.debug("Synthesis stream started, voice %s, language %s", speech.voice.name, speech.language)

    def _continue_stream(self, data: dict[str, Any]) -> None:
        stream = self._open_stream("synthesize-chunk")
        text = _text_of(data, "synthesize-chunk")
        stream.chars += len(text)
        self._check_length(stream.chars)
        _LOGGER.debug("Synthesize chunk: %r", text)
        if stream.ssml_parts is not None:
            stream.ssml_parts.append(text)
            return
        for sentence in stream.sentences.feed(text):
            self._queue_sentence(stream.speech, sentence)

    def _stop_stream(self) -> None:
        stream = self._open_stream("synthesize-stop")
        self._stream = None
        if stream.ssml_parts is not None:
            document = _read_ssml("".join(stream.ssml_parts))
            if document.language and not stream.speech.language_requested:  # known only now
                stream.speech.language = self._resolve_language(stream.speech.voice, document.language)
            self._queue_ssml(stream.speech, document)
        for sentence in stream.sentences.flush():
            self._queue_sentence(stream.speech, sentence)
        self._queue(partial(self._finish, stream.speech, streamed=True))

    def _open_stream(self, event_type: str) -> _Stream:
        if self._stream is None:
            raise RequestError(f"{event_type} without synthesize-start", NO_STREAM)
        return self._stream

    def _check_length(self, chars: int) -> None:
        if chars > self.options.max_text_chars:
            raise RequestError(f"Text is longer than {self.options.max_text_chars} characters", TEXT_TOO_LONG)

    # -- voice, language, info ------------------------------------------------

    def _new_speech(self, request: VoiceRequest, document_language: str | None = None) -> _Speech:
        voice = self._resolve_voice(request)
        requested = request.language or document_language
        return _Speech(
            voice=voice,
            language=self._resolve_language(voice, requested),
            language_requested=request.language is not None,
        )

    def _resolve_voice(self, request: VoiceRequest) -> Voice:
        voices = self.engine.voices()
        if not voices:
            raise RequestError("The server has no voices", UNKNOWN_VOICE)
        if request.name or request.speaker:
            voice = find_voice(voices, request.name, request.speaker)
            if voice is None:
                wanted = request.name or request.speaker
                raise RequestError(f"Unknown voice {wanted!r}; known: {_names(voices)}", UNKNOWN_VOICE)
            return voice
        if self.options.default_voice:
            voice = find_voice(voices, self.options.default_voice, self.options.default_voice)
            if voice is None:
                missing = self.options.default_voice
                raise RequestError(
                    f"Default voice {missing!r} does not exist; known: {_names(voices)}", UNKNOWN_VOICE
                )
            return voice
        return voices[0]

    def _resolve_language(self, voice: Voice, requested: str | None) -> str:
        if requested:
            language = to_model_language(requested, tuple(self.engine.languages()))
            if language is None:
                raise RequestError(f"Language {requested!r} is not supported", UNSUPPORTED_LANGUAGE)
            return language
        if len(voice.languages) == 1:
            return voice.languages[0]
        return self.options.default_language

    def _info(self) -> Info:
        all_languages = self.engine.languages()
        voices = [
            TtsVoice(
                name=voice.name,
                description=voice.description or voice.name,
                attribution=ATTRIBUTION,
                installed=True,
                version=None,
                languages=_bcp47_codes(voice.languages or all_languages),
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
        if self._speaker is None:
            self._speaker = asyncio.create_task(self._work_through_jobs(), name="qwen3tts speaker")
        self._jobs.put_nowait(job)

    def _queue_sentence(self, speech: _Speech, sentence: str) -> None:
        if speech.text_ready_at is None:
            speech.text_ready_at = time.monotonic()
        self._queue(partial(self._speak, speech, sentence))

    def _queue_ssml(self, speech: _Speech, document: SsmlDocument) -> None:
        """Queue an SSML document's sentences, with real silence wherever it has a break."""
        if document.ignored:
            _LOGGER.debug("SSML elements spoken without their tags: %s", ", ".join(document.ignored))
        for segment in document.segments(speech.language):
            for sentence in split_sentences(segment.text):
                self._queue_sentence(speech, sentence)
            if segment.pause_ms:
                self._queue(partial(self._send_silence, speech, segment.pause_ms))

    async def _send_silence(self, speech: _Speech, milliseconds: int) -> None:
        samples = self.engine.sample_rate * milliseconds // 1000
        await self._send_audio(speech, bytes(samples * self.engine.sample_width * self.engine.channels))

    async def _work_through_jobs(self) -> None:
        while (job := await self._jobs.get()) is not None:
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
                await self._fail_and_close(_short_failure(err), SYNTHESIS_FAILED)
                return

    async def _speak(self, speech: _Speech, sentence: str) -> None:
        """Synthesize one sentence, writing its audio as the engine produces it."""
        speech.chars += len(sentence)
        if self.options.normalize:
            try:
                sentence = normalize(sentence, speech.language)
            except Exception:  # a rule that trips on odd text must not cost the sentence its audio
                _LOGGER.warning("Could not normalise %r; speaking it as written", sentence, exc_info=True)
            if not sentence:  # only markup or emoji
                return
        _LOGGER.debug("Speaking sentence with %s: %r", speech.voice.name, sentence)
        chunks = self.inference.iterate(self.engine.synthesize, sentence, speech.voice, speech.language)
        async with aclosing(chunks):
            waiting_since = time.monotonic()
            async for pcm in chunks:
                speech.synthesis_seconds += time.monotonic() - waiting_since
                await self._send_audio(speech, pcm)
                waiting_since = time.monotonic()
            speech.synthesis_seconds += time.monotonic() - waiting_since

    async def _send_audio(self, speech: _Speech, pcm: bytes) -> None:
        """Write engine PCM as audio-chunks of at most samples_per_chunk samples."""
        await self._start_audio(speech)
        sample_bytes = self.engine.sample_width * self.engine.channels
        data = speech.pcm_remainder + bytes(pcm)
        whole = len(data) - len(data) % sample_bytes
        data, speech.pcm_remainder = data[:whole], data[whole:]
        step = self.options.samples_per_chunk * sample_bytes
        for offset in range(0, whole, step):
            piece = data[offset : offset + step]
            await self._send(
                AudioChunk(
                    rate=self.engine.sample_rate,
                    width=self.engine.sample_width,
                    channels=self.engine.channels,
                    audio=piece,
                    timestamp=self._milliseconds(speech.samples),
                )
            )
            if speech.first_audio_at is None:
                speech.first_audio_at = time.monotonic()
            speech.samples += len(piece) // sample_bytes

    async def _start_audio(self, speech: _Speech) -> None:
        if not speech.audio_started:
            speech.audio_started = True
            await self._send(
                AudioStart(
                    rate=self.engine.sample_rate,
                    width=self.engine.sample_width,
                    channels=self.engine.channels,
                    timestamp=0,
                )
            )

    async def _finish(self, speech: _Speech, streamed: bool) -> None:
        """End a response: audio-stop, and synthesize-stopped after a stream."""
        await self._start_audio(speech)
        await self._send(AudioStop(timestamp=self._milliseconds(speech.samples)))
        if streamed:
            await self._send(SynthesizeStopped())
        self._log_finished(speech)

    def _log_finished(self, speech: _Speech) -> None:
        audio_seconds = speech.samples / self.engine.sample_rate
        if speech.first_audio_at is None or speech.text_ready_at is None:
            first_audio = "no audio"
        else:
            first_audio = f"first audio after {speech.first_audio_at - speech.text_ready_at:.2f} s"
        rtf = f"{speech.synthesis_seconds / audio_seconds:.2f}" if audio_seconds else "-"
        _LOGGER.info(
            "Spoke %d chars with %s (%s): %.2f s of audio, %s, real-time factor %s",
            speech.chars,
            speech.voice.name,
            speech.language,
            audio_seconds,
            first_audio,
            rtf,
        )

    def _milliseconds(self, samples: int) -> int:
        return samples * 1000 // self.engine.sample_rate

    # -- writing ---------------------------------------------------------------

    async def _send(self, message: Eventable) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("connection closed")
        await self.write_event(message.event())

    async def _fail(self, text: str, code: str) -> None:
        """Send an error event; the caller then closes the connection."""
        self._closing = True
        _LOGGER.warning("Sending error %s: %s", code, text)
        with suppress(ConnectionError):
            await self._send(Error(text=text, code=code))

    async def _fail_and_close(self, text: str, code: str) -> None:
        await self._fail(text, code)
        await self.stop()


def find_voice(voices: Sequence[Voice], name: str | None, speaker: str | None = None) -> Voice | None:
    """The voice called name (any case), else the one called speaker, else the first of that speaker.

    A named preset ("kitchen", speaker ryan) is listed before the plain preset
    ryan: a request for speaker ryan alone still means the voice called ryan.
    """
    for wanted in (name, speaker):
        if wanted:
            for voice in voices:
                if voice.name.casefold() == wanted.casefold():
                    return voice
    if speaker:
        for voice in voices:
            if (voice.speaker or "").casefold() == speaker.casefold():
                return voice
    return None


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
    text_format = data.get("text_format") or "text"
    if text_format not in TEXT_FORMATS:
        raise RequestError(
            f"text_format {text_format!r} is not supported; send {' or '.join(TEXT_FORMATS)}", INVALID_EVENT
        )
    return str(text_format)


def _read_ssml(text: str) -> SsmlDocument:
    try:
        return parse_ssml(text)
    except SsmlError as err:
        raise RequestError(str(err), INVALID_SSML) from None


def _text_of(data: dict[str, Any], event_type: str) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise RequestError(f"{event_type} event without text", INVALID_EVENT)
    return text


def _bcp47_codes(model_languages: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(to_bcp47(language) for language in model_languages))


def _speakers(voice: Voice) -> list[TtsVoiceSpeaker] | None:
    # Every voice is one speaker; list it only when it has a name of its own a client could send.
    if voice.speaker and voice.speaker.casefold() != voice.name.casefold():
        return [TtsVoiceSpeaker(name=voice.speaker)]
    return None


def _names(voices: Sequence[Voice], limit: int = 20) -> str:
    names = ", ".join(voice.name for voice in voices[:limit])
    return names + (", ..." if len(voices) > limit else "")


def _short_failure(err: Exception) -> str:
    return f"Synthesis failed: {type(err).__name__}: {err}"[:200]

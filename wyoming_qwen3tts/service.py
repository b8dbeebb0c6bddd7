"""Speech requests independent of the protocol they came by: text in, whole-sample PCM out.

Both front ends, the Wyoming handler and the OpenAI-compatible HTTP API, are
thin adapters over this module. It resolves voices and languages, reads SSML,
cuts text into sentences, normalises them, runs each on the shared
InferenceQueue (so every client's sentences interleave step by step), and
turns breaks into silence. Refusals are RequestErrors whose codes both front
ends pass on (as a Wyoming error event, or an HTTP error body).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

from .engine.seams import Engine
from .languages import AUTO, to_model_language
from .requests import (
    INVALID_EVENT,
    INVALID_SSML,
    TEXT_TOO_LONG,
    UNKNOWN_VOICE,
    UNSUPPORTED_LANGUAGE,
    RequestError,
)
from .text import SsmlDocument, SsmlError, normalize, parse_ssml, split_sentences
from .voices.voice import Voice
from .worker import InferenceQueue

_LOGGER = logging.getLogger(__name__)

TEXT_FORMATS = ("text", "ssml")
NAME_SHOWN = 40  # characters of an unknown voice name repeated in the error
MAX_PAUSE_MS = 10_000  # longest SSML break (SSML itself suggests up to 10 s)
MAX_SILENCE_MS = 60_000  # most silence one request may ask for with breaks


@dataclass(frozen=True, kw_only=True)
class SpeechOptions:
    """Server-wide choices that apply to every request, whatever protocol brought it."""

    default_voice: str | None = None  # None: the engine's first voice
    default_language: str = AUTO  # "auto" or a model language name ("english")
    max_text_chars: int = 5000  # longer requests (or streams) are refused
    normalize: bool = True  # numbers, dates, money, markup ... written out before synthesis


@dataclass(frozen=True)
class VoiceRequest:
    """What a request asks for; any part may be missing."""

    name: str | None = None
    speaker: str | None = None
    language: str | None = None
    instructions: str | None = None  # a style instruction for this request (HTTP only)


@dataclass(frozen=True)
class Pause:
    """Silence between sentences (an SSML break)."""

    milliseconds: int


Part = str | Pause  # a sentence to speak, or a pause


@dataclass
class Utterance:
    """One response from its first to its last sample, and the numbers logged at its end."""

    voice: Voice
    language: str
    client: str = "-"  # who asked, for the log line ("wyoming 127.0.0.1:50312", "http ...")
    language_requested: bool = False  # the request named one: an SSML xml:lang does not override it
    instructions_ignored: bool = False  # the request's instructions could not be followed
    chars: int = 0
    samples: int = 0  # whole samples handed to the front end so far
    pcm_remainder: bytes = b""  # a trailing half sample, kept for the next engine chunk
    text_ready_at: float | None = None  # when its first sentence was ready to speak
    first_audio_at: float | None = None
    synthesis_seconds: float = 0.0  # time spent waiting for the engine
    outcome: str | None = None  # set once its log line is written


class Speech:
    """Turns requests into PCM on one engine and one inference queue, for every front end."""

    def __init__(self, engine: Engine, options: SpeechOptions, inference: InferenceQueue) -> None:
        self.engine = engine
        self.options = options
        self.inference = inference

    @property
    def sample_bytes(self) -> int:
        return self.engine.sample_width * self.engine.channels

    def check_length(self, chars: int) -> None:
        if chars > self.options.max_text_chars:
            raise RequestError(f"Text is longer than {self.options.max_text_chars} characters", TEXT_TOO_LONG)

    def check_text(self, text: str) -> None:
        """Length, and text the tokenizer can take (JSON escapes can make lone surrogates)."""
        self.check_length(len(text))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(
                "Text is not valid Unicode (it holds a lone surrogate)", INVALID_EVENT
            ) from None

    # -- voice and language ---------------------------------------------------

    def open(
        self, request: VoiceRequest, document_language: str | None = None, client: str = "-"
    ) -> Utterance:
        """A new utterance with its voice and language resolved (RequestError if they cannot be)."""
        voice = self.resolve_voice(request)
        ignored = False
        if request.instructions:
            if self.engine.follows_instructions(voice):
                voice = replace(voice, instruct=request.instructions)
            else:
                ignored = True
        return Utterance(
            voice=voice,
            language=self.resolve_language(voice, request.language or document_language),
            client=client,
            language_requested=request.language is not None,
            instructions_ignored=ignored,
        )

    def resolve_voice(self, request: VoiceRequest) -> Voice:
        voices = self.engine.voices()
        if not voices:
            raise RequestError("The server has no voices", UNKNOWN_VOICE)
        if request.name or request.speaker:
            voice = find_voice(voices, request.name, request.speaker)
            if voice is None:
                wanted = (request.name or request.speaker or "")[:NAME_SHOWN]
                raise RequestError(f"Unknown voice {wanted!r}; known: {voice_names(voices)}", UNKNOWN_VOICE)
            return voice
        return self.default_voice()

    def default_voice(self) -> Voice:
        voices = self.engine.voices()
        if self.options.default_voice:
            voice = find_voice(voices, self.options.default_voice, self.options.default_voice)
            if voice is None:
                missing = self.options.default_voice
                raise RequestError(
                    f"Default voice {missing!r} does not exist; known: {voice_names(voices)}", UNKNOWN_VOICE
                )
            return voice
        if not voices:
            raise RequestError("The server has no voices", UNKNOWN_VOICE)
        return voices[0]

    def resolve_language(self, voice: Voice, requested: str | None) -> str:
        if requested:
            language = to_model_language(requested, tuple(self.engine.languages()))
            if language is None:
                raise RequestError(f"Language {requested!r} is not supported", UNSUPPORTED_LANGUAGE)
            return language
        if len(voice.languages) == 1:
            return voice.languages[0]
        return self.options.default_language

    # -- text into parts --------------------------------------------------------

    def text_parts(self, text: str) -> list[Part]:
        return list(split_sentences(text))

    def ssml_parts(self, utterance: Utterance, document: SsmlDocument) -> list[Part]:
        """An SSML document's sentences, with a pause wherever it has a break."""
        if document.ignored:
            _LOGGER.debug("SSML elements spoken without their tags: %s", ", ".join(document.ignored))
        parts: list[Part] = []
        silence_left = MAX_SILENCE_MS
        for segment in document.segments(utterance.language):
            parts.extend(split_sentences(segment.text))
            pause = min(segment.pause_ms, MAX_PAUSE_MS, silence_left)
            if pause > 0:
                parts.append(Pause(pause))
                silence_left -= pause
        return parts

    def prepare(
        self, text: str, text_format: str, request: VoiceRequest, client: str = "-"
    ) -> tuple[Utterance, list[Part]]:
        """A whole one-shot request: its utterance and the parts to speak, or a RequestError."""
        self.check_text(text)
        if check_text_format(text_format) == "ssml":
            document = read_ssml(text)
            utterance = self.open(request, document.language, client)
            return utterance, self.ssml_parts(utterance, document)
        return self.open(request, client=client), self.text_parts(text)

    # -- parts into PCM -----------------------------------------------------------

    def mark_text_ready(self, utterance: Utterance) -> None:
        if utterance.text_ready_at is None:
            utterance.text_ready_at = time.monotonic()

    async def render(self, utterance: Utterance, part: Part) -> AsyncGenerator[bytes, None]:
        """Whole-sample PCM of one part, chunk by chunk as the engine makes it."""
        if isinstance(part, Pause):
            samples = self.engine.sample_rate * part.milliseconds // 1000
            yield self._hand_out(utterance, bytes(samples * self.sample_bytes))
            return
        async with aclosing(self._speak(utterance, part)) as chunks:
            async for pcm in chunks:
                whole = self._hand_out(utterance, pcm)
                if whole:
                    yield whole

    async def stream(self, utterance: Utterance, parts: Sequence[Part]) -> AsyncGenerator[bytes, None]:
        """Whole-sample PCM of every part in order."""
        self.mark_text_ready(utterance)
        for part in parts:
            async with aclosing(self.render(utterance, part)) as chunks:
                async for pcm in chunks:
                    yield pcm

    async def _speak(self, utterance: Utterance, sentence: str) -> AsyncGenerator[bytes, None]:
        utterance.chars += len(sentence)
        if self.options.normalize:
            try:
                sentence = normalize(sentence, utterance.language)
            except Exception:  # a rule that trips on odd text must not cost the sentence its audio
                _LOGGER.warning("Could not normalise %r; speaking it as written", sentence, exc_info=True)
            if not sentence:  # only markup or emoji
                return
        _LOGGER.debug("Speaking sentence with %s: %r", utterance.voice.name, sentence)
        chunks = self.inference.iterate(self.engine.synthesize, sentence, utterance.voice, utterance.language)
        async with aclosing(chunks):
            waiting_since = time.monotonic()
            async for pcm in chunks:
                waited = time.monotonic() - waiting_since
                utterance.synthesis_seconds += waited
                _LOGGER.debug(
                    "%s: chunk of %d samples after %.0f ms",
                    utterance.client,
                    len(pcm) // self.sample_bytes,
                    waited * 1000,
                )
                yield pcm
                waiting_since = time.monotonic()
            utterance.synthesis_seconds += time.monotonic() - waiting_since

    def _hand_out(self, utterance: Utterance, pcm: bytes) -> bytes:
        """Whole samples of pcm (after any half sample left over), counted as handed out."""
        data = utterance.pcm_remainder + bytes(pcm)
        whole = len(data) - len(data) % self.sample_bytes
        data, utterance.pcm_remainder = data[:whole], data[whole:]
        if whole:
            if utterance.first_audio_at is None:
                utterance.first_audio_at = time.monotonic()
            utterance.samples += whole // self.sample_bytes
        return data

    def log_finished(self, utterance: Utterance, outcome: str = "ok") -> None:
        """One line per request: who, voice, language, size, first audio, real-time factor, outcome."""
        if utterance.outcome is not None:
            return
        utterance.outcome = outcome
        audio_seconds = utterance.samples / self.engine.sample_rate
        if utterance.first_audio_at is None or utterance.text_ready_at is None:
            first_audio = "-"
        else:
            first_audio = f"{(utterance.first_audio_at - utterance.text_ready_at) * 1000:.0f}"
        rtf = f"{utterance.synthesis_seconds / audio_seconds:.2f}" if audio_seconds else "-"
        _LOGGER.info(
            "request client=%s voice=%s language=%s chars=%d audio_s=%.2f first_audio_ms=%s rtf=%s "
            "outcome=%s",
            utterance.client,
            utterance.voice.name,
            utterance.language,
            utterance.chars,
            audio_seconds,
            first_audio,
            rtf,
            outcome,
        )


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


def check_text_format(text_format: Any) -> str:
    """The request's text format, if it is one of TEXT_FORMATS."""
    if text_format not in TEXT_FORMATS:
        raise RequestError(
            f"text_format {text_format!r} is not supported; send {' or '.join(TEXT_FORMATS)}", INVALID_EVENT
        )
    return str(text_format)


def read_ssml(text: str) -> SsmlDocument:
    try:
        return parse_ssml(text)
    except SsmlError as err:
        raise RequestError(str(err), INVALID_SSML) from None


def voice_names(voices: Sequence[Voice], limit: int = 20) -> str:
    names = ", ".join(voice.name for voice in voices[:limit])
    return names + (", ..." if len(voices) > limit else "")


def short_failure(err: Exception) -> str:
    return f"Synthesis failed: {type(err).__name__}: {err}"[:200]


def describe_client(peer: Any, protocol: str) -> str:
    """'wyoming 127.0.0.1:50312' from a socket's peer name (a tuple, a path or None)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{protocol} {peer[0]}:{peer[1]}"
    return f"{protocol} {peer or 'local'}"

"""The speech service: one engine and its worker thread behind every front end (Wyoming, HTTP, ...).

speak() turns a SpeechRequest into a Speech: checked, its voice and language resolved, spoken part by part on
the worker (so every client's sentences interleave step by step), and logged in one line when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, cast

from .languages import AUTO, to_model_language
from .requests import (
    INVALID_EVENT,
    INVALID_SSML,
    NOT_READY,
    TEXT_TOO_LONG,
    UNKNOWN_VOICE,
    UNSUPPORTED_LANGUAGE,
    RequestError,
    SpeechRequest,
    TextStream,
    Utterance,
    VoiceRequest,
    outcome_of,
)
from .text import Part, Pause, SsmlDocument, SsmlError, normalize, parse_ssml, ssml_parts
from .voices.config import CONFIG_NAME, read_openai_voices
from .voices.voice import Voice
from .worker import InferenceWorker

if TYPE_CHECKING:
    from .engine.seams import Engine

_LOGGER = logging.getLogger(__name__)

NAME_SHOWN = 40  # characters of an unknown voice name repeated in the error


@dataclass(frozen=True, kw_only=True)
class SpeechOptions:
    """Server-wide choices that apply to every request, whatever front end brought it."""

    default_voice: str | None = None  # None: the engine's first voice
    default_language: str = AUTO  # "auto" or a model language name ("english")
    max_text_chars: int = 5000  # longer requests (or streams) are refused
    normalize: bool = True  # numbers, dates, money, markup ... written out before synthesis
    voices_dir: Path | None = None  # its voices.json may rename OpenAI's voice names
    look_ahead: int = 0  # later sentences of a request started while one is spoken (needs batching)


class SpeechService:
    """Speaks requests on one engine and one worker thread, for every front end."""

    def __init__(self, engine: Engine, options: SpeechOptions, worker: InferenceWorker) -> None:
        self._engine = engine
        self.options = options
        self.worker = worker
        self._openai_voices: tuple[float, dict[str, str]] = (-1.0, {})  # voices.json's mtime, its table

    # -- the audio it makes -------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self._engine.sample_rate

    @property
    def sample_width(self) -> int:
        return self._engine.sample_width

    @property
    def channels(self) -> int:
        return self._engine.channels

    @property
    def sample_bytes(self) -> int:
        return self._engine.sample_width * self._engine.channels

    # -- voices --------------------------------------------------------------------------------

    def voices(self) -> Sequence[Voice]:
        """The voices a client may ask for, default first."""
        return self._engine.voices()

    @property
    def model_kind(self) -> str:
        """The checkpoint kind: "custom_voice", "base" or "voice_design"."""
        return self._engine.model_kind

    def languages(self) -> Sequence[str]:
        """Model language names the model speaks (without "auto")."""
        return self._engine.languages()

    def voice_languages(self, voice: Voice) -> Sequence[str]:
        """The model languages voice speaks: its own, else every one of the model."""
        return voice.languages or self._engine.languages()

    def follows_instructions(self, voice: Voice) -> bool:
        return self._engine.follows_instructions(voice)

    def default_voice(self) -> Voice:
        voices = self._engine.voices()
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

    def openai_voices(self) -> dict[str, str]:
        """voices.json's "openai_voices" (OpenAI voice name -> voice name), re-read when the file changes."""
        if self.options.voices_dir is None:
            return {}
        path = self.options.voices_dir / CONFIG_NAME
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return {}
        if mtime != self._openai_voices[0]:
            self._openai_voices = (mtime, read_openai_voices(path))
        return self._openai_voices[1]

    async def clone(self, audio: bytes, transcript: str | None) -> Voice:
        """A voice cloned from reference audio for one request (Base models), built on the worker."""
        return await self.worker.run(self._engine.clone_voice, audio, transcript)

    async def reload_voices(self) -> bool:
        """Read the voices directory again now, on the worker (after a change the server made itself);
        True if the voices were rebuilt. The voices are the new ones when it returns."""
        return await self.worker.run(self._engine.reload_voices)

    async def watch_voices(self, interval: float) -> None:
        """Look for changes in the voices directory every interval seconds, until cancelled.

        The look runs on the worker, between synthesis steps: a new clone prompt runs the model,
        and all torch work stays on that one thread.
        """
        while True:
            await asyncio.sleep(interval)
            try:
                await self.worker.run(self._engine.reload_voices)
            except Exception:
                if self.worker.closed:  # shutting down
                    return
                _LOGGER.exception("Reloading the voices failed; the voices stay as they were")

    # -- requests ------------------------------------------------------------------------------

    def speak(self, request: SpeechRequest, voice: Voice | None = None) -> Speech:
        """The Speech of request, checked now (RequestError if it cannot be spoken).

        voice is one the front end holds already (a clone, what an OpenAI name maps to); without it the
        request's voice is looked up. A whole text is ready to speak at once; otherwise feed the Speech
        its text and close it.
        """
        if request.text is not None:
            self.check_text(request.text)
        text = TextStream(request.text_format)
        document = read_ssml(request.text) if request.text is not None and text.ssml else None
        speech = Speech(self, *self._voice_and_utterance(request, voice), text)
        if request.text is not None:
            if document is None:
                text.feed(request.text)
            speech._complete(document)
        return speech

    def _voice_and_utterance(self, request: SpeechRequest, voice: Voice | None) -> tuple[Voice, Utterance]:
        """The voice to speak with (its instructions applied where it follows them), and a new Utterance."""
        asked = request.voice
        voice = voice or self.resolve_voice(asked)
        ignored = False
        if asked.instructions:
            if self._engine.follows_instructions(voice):
                voice = replace(voice, instruct=asked.instructions)
            else:
                ignored = True
        utterance = Utterance(
            voice_name=voice.name,
            language=self.resolve_language(voice, asked.language),
            client=request.client,
            language_requested=bool(asked.language),
            instructions_ignored=ignored,
            sample_rate=self.sample_rate,
        )
        return voice, utterance

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

    def resolve_voice(self, request: VoiceRequest) -> Voice:
        voices = self._engine.voices()
        if not voices:
            raise RequestError("The server has no voices", UNKNOWN_VOICE)
        if request.name or request.speaker:
            voice = find_voice(voices, request.name, request.speaker)
            if voice is None:
                wanted = (request.name or request.speaker or "")[:NAME_SHOWN]
                raise RequestError(f"Unknown voice {wanted!r}; known: {voice_names(voices)}", UNKNOWN_VOICE)
            return voice
        return self.default_voice()

    def resolve_language(self, voice: Voice, requested: str | None) -> str:
        if requested:
            language = to_model_language(requested, tuple(self._engine.languages()))
            if language is None:
                raise RequestError(f"Language {requested!r} is not supported", UNSUPPORTED_LANGUAGE)
            return language
        if len(voice.languages) == 1:
            return voice.languages[0]
        return self.options.default_language

    def _begin(self, voice: Voice, utterance: Utterance, part: Part, ahead: bool = False) -> _Rendering:
        """Start one part now (with batching, a sentence joins the batch at once); its PCM as it comes.

        ahead: started before its turn (look-ahead); call the rendering's listen() when its turn comes.
        """
        if isinstance(part, Pause):
            return _Rendering(self._silence(part))
        utterance.chars += len(part)
        sentence = part
        if self.options.normalize:
            try:
                sentence = normalize(sentence, utterance.language)
            except Exception:  # a rule that trips on odd text must not cost the sentence its audio
                _LOGGER.warning("Could not normalise %r; speaking it as written", sentence, exc_info=True)
            if not sentence:  # only markup or emoji
                return _Rendering(self._silence(Pause(0)))
        _LOGGER.debug("Speaking sentence with %s: %r", voice.name, sentence)
        if self.worker.max_batch > 1:
            audio = self.worker.speak(
                self._engine, sentence, voice, utterance.language, ahead, owner=utterance
            )
            return _Rendering(self._timed(utterance, audio), audio.cancel, audio.listen)
        return _Rendering(
            self._timed(
                utterance, self.worker.iterate(self._engine.synthesize, sentence, voice, utterance.language)
            )
        )

    async def _silence(self, pause: Pause) -> AsyncGenerator[bytes, None]:
        if pause.milliseconds:
            yield bytes(self.sample_rate * pause.milliseconds // 1000 * self.sample_bytes)

    async def _timed(self, utterance: Utterance, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """The chunks, with the time spent waiting for each counted as synthesis time."""
        closing = chunks if isinstance(chunks, AsyncGenerator) else None
        try:
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
        finally:
            if closing is not None:
                await closing.aclose()


class _Rendering:
    """One part being made: its PCM as it comes, and how to stop making it (a sentence in the batch)."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        cancel: Callable[[], None] = lambda: None,
        listen: Callable[[], None] = lambda: None,
    ) -> None:
        self.chunks = chunks
        self.cancel = cancel
        self.listen = listen  # its turn to be heard (a part started ahead)


class Speech:
    """One request being spoken: its Utterance, its text as it arrives, and its audio.

    Speak it inside `async with speech:`, iterating it for whole-sample PCM as the engine makes it; the
    request's log line is written when the block ends, saying how it ended. Text that arrives in pieces
    is fed with feed() and ended with close(), while it is being spoken.
    """

    def __init__(self, service: SpeechService, voice: Voice, utterance: Utterance, text: TextStream) -> None:
        self.voice = voice
        self.utterance = utterance
        self._service = service
        self._text = text
        self._audio = self._pcm()
        self._working = False  # speaking a part, or ending (not just waiting for text)

    @property
    def waiting(self) -> int:
        """Parts ready to speak and not yet begun, the end included once the text is complete."""
        return self._text.waiting

    @property
    def speaking(self) -> bool:
        """Audio is being made or waits to be (False while it only waits for more text)."""
        return self._working or self._text.waiting > 0

    def feed(self, text: str) -> None:
        """More of the request's text; each sentence it completes is ready to speak."""
        self._service.check_length(self._text.chars + len(text))
        self._text.feed(text)

    def close(self) -> None:
        """The request's text is complete; SSML is read now, whole."""
        self._complete(read_ssml(self._text.document) if self._text.ssml else None)

    def _complete(self, document: SsmlDocument | None) -> None:
        """Complete the text, with the parts of its SSML document if it has one."""
        if document is not None:
            utterance = self.utterance
            if document.language and not utterance.language_requested:  # known only now
                utterance.language = self._service.resolve_language(self.voice, document.language)
            if document.ignored:
                _LOGGER.debug("SSML elements spoken without their tags: %s", ", ".join(document.ignored))
            self._text.add(ssml_parts(document, utterance.language))
        self._text.close()

    async def __aenter__(self) -> Speech:
        self._working = True
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            await self._audio.aclose()
        finally:
            self._working = False
            self.utterance.text_ready_at = self._text.ready_at
            _LOGGER.info("%s", self.utterance.log_line(outcome_of(error), self._service.sample_rate))

    def __aiter__(self) -> Speech:
        return self

    async def __anext__(self) -> bytes:
        return await self._audio.__anext__()

    async def _pcm(self) -> AsyncGenerator[bytes, None]:
        """Whole-sample PCM of every part in order. With look-ahead, parts already complete start while
        an earlier one is spoken (batched with it); their audio waits, in order, and is dropped with
        their places in the batch if the request ends first."""
        service = self._service
        ahead: deque[_Rendering] = deque()
        ended = False

        def look_ahead() -> None:
            nonlocal ended
            while not ended and len(ahead) < service.options.look_ahead:
                part = self._text.ready_part()
                if part is NOT_READY:
                    return
                if part is None:
                    ended = True
                    return
                ahead.append(service._begin(self.voice, self.utterance, cast(Part, part), ahead=True))

        try:
            while True:
                if ahead:
                    current = ahead.popleft()
                    current.listen()
                else:
                    if ended:
                        return
                    self._working = False
                    part = await self._text.next_part()
                    self._working = True
                    if part is None:
                        return
                    current = service._begin(self.voice, self.utterance, part)
                look_ahead()
                try:
                    async with aclosing(current.chunks) as chunks:
                        async for pcm in chunks:
                            whole = self.utterance.whole_samples(pcm, service.sample_bytes)
                            if whole:
                                yield whole
                            look_ahead()
                finally:
                    current.cancel()
        finally:
            for rendering in ahead:
                rendering.cancel()
                await rendering.chunks.aclose()


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


def voice_names(voices: Sequence[Voice], limit: int = 20) -> str:
    names = ", ".join(voice.name for voice in voices[:limit])
    return names + (", ..." if len(voices) > limit else "")


def read_ssml(text: str) -> SsmlDocument:
    try:
        return parse_ssml(text)
    except SsmlError as err:
        raise RequestError(str(err), INVALID_SSML) from None

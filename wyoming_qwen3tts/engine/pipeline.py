"""What every backend's engine shares: voices, clone prompts, prompts, frame caps and the chunk schedule.

A backend loads its parts (steps, embedding tables, codec step, the encoders
that clone a voice: the types of engine/seams.py) and hands them to
`PipelineEngine` with its `EngineOptions`; from there on a sentence takes the
same path whatever runs the steps: prompt (engine/prompt.py) -> frames
(engine/loop.py) -> chunks of PCM (engine/codec.py).
"""

from __future__ import annotations

import io
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch

from ..requests import EngineError
from ..voices import (
    ClonePromptCache,
    ModelVoices,
    StoredPrompt,
    VoiceCatalog,
    VoiceEntry,
    VoiceError,
    prompt_key,
)
from ..voices.voice import Voice
from .codec import StreamingDecoder, decode_together
from .codec_thread import CodecThread
from .loop import FrameGenerator, FrameRow, TalkerPrompt
from .options import EngineOptions
from .prompt import PromptBuilder
from .seams import CloneReference, CodecStep, Engine, EngineStream, ModelSteps, ReferenceEncoder

_LOGGER = logging.getLogger(__name__)

# Speech runs at roughly one 80 ms frame per Latin character and up to three
# per CJK character; the cap stops a model that runs away, not a slow speaker.
FRAMES_PER_CHAR = 4
MIN_FRAME_CAP = 50
MAX_FRAME_CAP = 3000  # 4 minutes of speech in one sentence; the talker's positions must fit the prompt too
# Frames per decoded chunk: the first is one frame (80 ms of speech) for fast first audio, later ones
# larger, as the codec decodes a frame for less when it gets several at once (docs/speed.md, "Design
# measurements").
CHUNK_SCHEDULE = (1, 3, 8)
# A sentence's first chunks are decoded at once even with a codec thread (codec_thread.py), so its first
# audio and the audio right after it do not wait for a job of other sentences' chunks.
CHUNKS_AT_ONCE = 2
MIN_REFERENCE_SECONDS = 0.5  # shorter reference audio cannot give a speaker embedding
REQUEST_PROMPTS_KEPT = 8  # clone prompts of recent voice-clone requests, kept for a repeat


@dataclass(frozen=True)
class ClonePrompt:
    """What a cloned voice speaks with: its reference, and the codec state after its reference codes.

    A request keeps its Voice, and so this, even when the voices directory
    changes while it speaks.
    """

    key: str  # the clone prompt cache key: content of the audio, transcript, mode, model
    reference: CloneReference
    primed: StreamingDecoder | None  # in-context mode: a decoder that has heard the reference codes


@dataclass
class EngineParts:
    """What a backend loads: the same kinds of parts for every backend."""

    steps: ModelSteps
    prompts: PromptBuilder
    codec: CodecStep
    encoder: ReferenceEncoder | None  # Base models only
    clone_fingerprint: Callable[[], str]  # of the encoders, for clone prompt cache keys; called when needed
    description: str  # formats and threads, for the log
    codec_threads: int = 0  # torch threads of a codec thread beside the steps (codec_thread.py); 0: none


class _UnreadableAudio(ValueError):
    """Reference audio that cannot be cloned from; the message says why."""


def to_pcm16(waveform: np.ndarray | torch.Tensor) -> bytes:
    """Float audio in [-1, 1] to little-endian 16-bit PCM bytes."""
    clipped = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


class PipelineEngine(Engine):
    """An engine on a backend's parts: voices, prompts, frames and streamed PCM."""

    def __init__(self, model_dir: Path, options: EngineOptions, parts: EngineParts, started: float) -> None:
        self._options = options
        self.parts = parts
        self.prompts = parts.prompts
        self.frame_generator = FrameGenerator(parts.steps, parts.prompts.tables)
        self._kind = parts.prompts.model_kind
        self._languages = [lang for lang in parts.prompts.languages if lang != "auto"]
        _LOGGER.info(
            "Loaded %s (%s; %s) in %.1f s",
            model_dir,
            self._kind,
            parts.description,
            time.monotonic() - started,
        )
        # Built once: its per-module tables are shared by every copy().
        self._fresh_decoder = StreamingDecoder(parts.codec)
        self._threads = torch.get_num_threads()
        self._codec_thread: CodecThread[SentenceStream] | None = None
        if 0 < parts.codec_threads < self._threads:
            self._codec_thread = CodecThread(parts.codec_threads, self._threads - parts.codec_threads)
        self._clone_prompts: dict[str, ClonePrompt] = {}  # by cache key: voices with the same audio share one
        self._request_prompts: OrderedDict[str, ClonePrompt] = OrderedDict()  # HTTP voice-clone, newest last
        self._prompt_cache = ClonePromptCache(options.data_dir / "voice-cache")
        self._fingerprint: str | None = None  # of the encoders that make clone prompts, once one is needed
        self._catalog = self._load_voices(options.voices_dir)
        self._after_clone_prompts()
        if not self._catalog.voices():
            raise EngineError(
                f"the {self._kind} model at {model_dir} has no voices: a Base model clones the voices in "
                "--voices-dir (NAME.wav + NAME.txt, or voices.json); add at least one",
                "no-voices",
            )

    def _after_clone_prompts(self) -> None:
        """A backend's clean-up once clone prompts were built (e.g. releasing checkpoint pages)."""

    @property
    def model_kind(self) -> str:
        return self._kind

    def languages(self) -> Sequence[str]:
        return self._languages

    def voices(self) -> Sequence[Voice]:
        return self._catalog.voices()

    def follows_instructions(self, voice: Voice) -> bool:
        # A VoiceDesign voice is its instruction; 0.6B CustomVoice models drop a preset's (qwen-tts does).
        if voice.kind == "design":
            return True
        return voice.kind == "preset" and self.prompts.follows_instructions

    def reload_voices(self) -> bool:
        """Rebuild the voices if a file of --voices-dir changed (a stat per file when nothing did)."""
        if not self._catalog.reload():
            return False
        in_use = {
            v.clone_prompt.key for v in self._catalog.voices() if isinstance(v.clone_prompt, ClonePrompt)
        }
        self._clone_prompts = {key: p for key, p in self._clone_prompts.items() if key in in_use}
        self._after_clone_prompts()
        return True

    def _load_voices(self, voices_dir: Path | None) -> VoiceCatalog:
        prompts = self.prompts
        custom = self._kind == "custom_voice"
        capabilities = ModelVoices(
            kind=self._kind,
            languages=tuple(self._languages),
            speakers=tuple(prompts.speakers) if custom else (),
            dialects=dict(prompts.dialects) if custom else {},
            follows_instructions=prompts.follows_instructions,
        )
        catalog = VoiceCatalog(capabilities, voices_dir, self._clone_prompt)
        catalog.load()
        return catalog

    def _clone_prompt(self, entry: VoiceEntry) -> ClonePrompt:
        """The prompt of a cloned voice of the catalog: see _prompt_from."""
        assert entry.audio is not None
        if self.parts.encoder is None:
            raise VoiceError(entry.audio, entry.name, f"a {self._kind} model cannot clone voices")
        try:
            prompt = self._prompt_from(entry.audio.read_bytes(), entry.transcript, entry.name)
        except _UnreadableAudio as err:
            raise VoiceError(entry.audio, entry.name, str(err)) from None
        self._clone_prompts[prompt.key] = prompt
        return prompt

    def clone_voice(self, audio: bytes, transcript: str | None) -> Voice:
        """A voice for one request, cloned from audio it brought (the HTTP API's voice-clone)."""
        if self.parts.encoder is None:
            return super().clone_voice(audio, transcript)
        try:
            prompt = self._prompt_from(audio, transcript, "request")
        except _UnreadableAudio as err:
            raise EngineError(f"ref_audio {err}", "invalid-audio") from None
        # Kept apart from the catalog's prompts, and only the last few: requests must not grow memory.
        self._request_prompts[prompt.key] = prompt
        self._request_prompts.move_to_end(prompt.key)
        while len(self._request_prompts) > REQUEST_PROMPTS_KEPT:
            self._request_prompts.popitem(last=False)
        mode = "in-context" if transcript else "speaker embedding"
        return Voice("cloned", "clone", f"cloned from the request ({mode})", clone_prompt=prompt)

    def _prompt_from(self, audio: bytes, transcript: str | None, name: str) -> ClonePrompt:
        """A clone prompt: from memory, else from the disk cache, else built by the encoders."""
        encoder = self.parts.encoder
        assert encoder is not None
        if self._fingerprint is None:
            self._fingerprint = self.parts.clone_fingerprint()
        key = prompt_key(audio, transcript, self._fingerprint)
        known = self._clone_prompts.get(key) or self._request_prompts.get(key)
        if known is not None:
            return known
        started = time.monotonic()
        stored = self._prompt_cache.load(key)
        if stored is not None:
            reference = CloneReference(stored.ref_code, stored.ref_spk_embedding, stored.ref_text)
            source = "read from the cache"
        else:
            # Decoded from the bytes the key was made of, the way qwen-tts reads a file (librosa, own rate).
            try:
                waveform, rate = librosa.load(io.BytesIO(audio), sr=None, mono=True)
            except Exception as err:  # soundfile and audioread raise their own kinds
                reason = getattr(err, "error_string", None) or err
                raise _UnreadableAudio(
                    f"cannot be read as audio ({reason}); use wav, flac, ogg or mp3"
                ) from None
            if waveform.size < rate * MIN_REFERENCE_SECONDS:
                raise _UnreadableAudio(f"is shorter than {MIN_REFERENCE_SECONDS} s; record a sentence or two")
            reference = encoder.clone_reference(waveform, int(rate), transcript)
            self._prompt_cache.save(
                key,
                StoredPrompt(reference.speaker_embedding, reference.ref_code, reference.ref_text),
                name,
            )
            source = "built"
        primed = None
        if reference.ref_code is not None:
            # In-context cloning continues the reference audio: the codec must hear it first.
            # Decode it once here and start every request from that state.
            primed = self._fresh_decoder.copy()
            primed.decode(reference.ref_code)
        prompt = ClonePrompt(key, reference, primed)
        _LOGGER.info("Voice %s: clone prompt %s in %.2f s", name, source, time.monotonic() - started)
        return prompt

    def _decoder_for(self, voice: Voice) -> StreamingDecoder:
        """A decoder for one utterance; a cloned voice's starts from its decoded reference codes."""
        primed = voice.clone_prompt.primed if isinstance(voice.clone_prompt, ClonePrompt) else None
        return (primed or self._fresh_decoder).copy()

    def frame_cap(self, text: str) -> int:
        """Most frames one sentence may produce: --max-frames, else derived from its length."""
        derived = min(MAX_FRAME_CAP, MIN_FRAME_CAP + FRAMES_PER_CHAR * len(text))
        return min(self._options.max_frames, derived) if self._options.max_frames else derived

    def prompt(self, text: str, voice: Voice, language: str) -> TalkerPrompt:
        """The talker prompt for this text, voice and language, as qwen-tts builds it."""
        overrides = {"do_sample": False, "subtalker_dosample": False} if self._options.greedy else None
        clone = voice.clone_prompt.reference if isinstance(voice.clone_prompt, ClonePrompt) else None
        if voice.kind not in ("preset", "clone", "design"):
            raise EngineError(f"voice {voice.name} has unknown kind {voice.kind!r}", "bad-voice")
        try:
            return self.prompts.build(
                text,
                language,
                speaker=voice.speaker if voice.kind == "preset" else None,
                instruct=voice.instruct if voice.kind != "clone" else None,
                clone=clone,
                kind=self._kind,
                sampling_overrides=overrides,
            )
        except ValueError as err:
            raise EngineError(str(err), "bad-voice") from None

    def frames(self, text: str, voice: Voice, language: str) -> Iterator[torch.Tensor]:
        """The frames of codes for text, each as soon as it exists."""
        return self.frame_generator.frames(self.prompt(text, voice, language), self.frame_cap(text))

    def start(self, text: str, voice: Voice, language: str) -> SentenceStream:
        """A sentence ready to advance: its prompt run through the talker, its decoder ready."""
        row = self.frame_generator.start(self.prompt(text, voice, language), self.frame_cap(text))
        return SentenceStream(row, self._decoder_for(voice))

    def start_many(self, sentences: Sequence[tuple[str, Voice, str]]) -> list[EngineStream | Exception]:
        """Several sentences' prompts through the talker in one step; a sentence whose prompt cannot be
        built gets its error and the others start. Should the joint step fail, each starts alone, so
        only the sentence at fault gets the error."""
        started: list[EngineStream | Exception | None] = []
        ready: list[tuple[int, TalkerPrompt, int, Voice]] = []  # (index in started, prompt, cap, voice)
        for text, voice, language in sentences:
            try:
                prompt = self.prompt(text, voice, language)
            except Exception as err:
                started.append(err)
                continue
            ready.append((len(started), prompt, self.frame_cap(text), voice))
            started.append(None)  # until its stream is made below
        for (index, *_), stream in zip(ready, self._start_rows(ready), strict=True):
            started[index] = stream
        return started  # type: ignore[return-value]  # no None is left

    def _start_rows(
        self, ready: list[tuple[int, TalkerPrompt, int, Voice]]
    ) -> list[EngineStream | Exception]:
        """The streams of prompts started together, or each one's error: should the joint step fail,
        each starts alone, so only the prompt at fault gets an error."""
        try:
            with self._step_threads():
                rows = self.frame_generator.start_rows(
                    [item[1] for item in ready], [item[2] for item in ready]
                )
        except Exception as err:
            if len(ready) == 1:
                return [err]
            _LOGGER.exception("Starting %d sentences together failed; starting each alone", len(ready))
            return [stream for item in ready for stream in self._start_rows([item])]
        return [
            SentenceStream(row, self._decoder_for(item[3])) for item, row in zip(ready, rows, strict=True)
        ]

    def advance(self, streams: Sequence[SentenceStream]) -> list[bytes]:  # type: ignore[override]
        """One frame for every stream in one batched pass; each stream's PCM that is ready now (the chunks
        due decoded together, equal lengths in one pass). With a codec thread, a stream's later chunks
        are decoded there while the next frames' steps run, and handed out once done."""
        with self._step_threads():
            frames = self.frame_generator.advance([stream.row for stream in streams])
        chunks = [stream.take(frame) for stream, frame in zip(streams, frames, strict=True)]
        due = [index for index, chunk in enumerate(chunks) if chunk is not None]
        codec = self._codec_thread
        stepping = any(not stream.row.done for stream in streams)
        later = []
        if codec is not None and stepping:
            later = [index for index in due if streams[index].chunks_decoded >= CHUNKS_AT_ONCE]
        now = [index for index in due if index not in later]
        if codec is not None and codec.pending and (later or not codec.busy or not stepping):
            for stream, wav in codec.collect():  # waits only for a job that must be done first
                stream.decoded.append(to_pcm16(wav))
                stream.decoding = False
        if now:
            with self._step_threads():
                samples = decode_together([streams[i].decoder for i in now], [chunks[i] for i in now])  # type: ignore[misc]
            for index, wav in zip(now, samples, strict=True):
                streams[index].decoded.append(to_pcm16(wav))
        if later:
            assert codec is not None
            for index in later:
                streams[index].decoding = True
            codec.submit(
                [streams[i] for i in later],
                [streams[i].decoder for i in later],
                [chunks[i] for i in later],  # type: ignore[misc]
            )
        for index in due:
            streams[index].chunks_decoded += 1
        return [stream.hand_out() for stream in streams]

    @contextmanager
    def _step_threads(self) -> Iterator[None]:
        """Every torch thread for the steps, but those of the codec thread while it decodes."""
        codec = self._codec_thread
        if codec is None or not codec.busy:
            yield
            return
        torch.set_num_threads(codec.step_threads)
        try:
            yield
        finally:
            torch.set_num_threads(self._threads)

    def warmup(self, rows: int = 1, voice: Voice | None = None, language: str = "auto") -> None:
        """The short synthesis, then every batch size up to rows through the steps, so the first requests
        that meet are not slow either (traced steps record each batch size once)."""
        super().warmup(rows, voice, language)
        for count in range(2, rows + 1):
            self.frame_generator.prepare_rows(count)

    def synthesize(self, text: str, voice: Voice, language: str) -> Iterator[bytes]:
        stream = self.start(text, voice, language)
        while not stream.done:
            (pcm,) = self.advance([stream])
            if pcm:
                yield pcm


class SentenceStream(EngineStream):
    """One sentence being synthesized: its frame row, its codec decoder and its chunk schedule.

    Frames are decoded in chunks of CHUNK_SCHEDULE frames (1 first, for fast first audio). While the
    stream is not urgent (generated ahead of the sentence being listened to) its frames wait undecoded:
    the codec's work scales with every row, unlike a batched step, so it goes to the sentence that is
    heard now; once urgent, the waiting frames are decoded a chunk a step, faster than they play.
    """

    def __init__(self, row: FrameRow, decoder: StreamingDecoder) -> None:
        self.row = row
        self.decoder = decoder
        self.pending: list[torch.Tensor] = []
        self.schedule = iter(CHUNK_SCHEDULE)
        self.wanted = next(self.schedule)
        self.chunks_decoded = 0  # handed to the codec, now or on its thread
        self.decoding = False  # a chunk is on the codec thread
        self.decoded: list[bytes] = []  # PCM ready, not yet handed out

    @property
    def done(self) -> bool:
        return self.row.done and not self.pending and not self.decoding and not self.decoded

    def hand_out(self) -> bytes:
        """The PCM ready since last asked, in order."""
        pcm = b"".join(self.decoded)
        self.decoded.clear()
        return pcm

    @property
    def held(self) -> bool:
        return self.row.done and not self.urgent

    def take(self, frame: torch.Tensor | None) -> torch.Tensor | None:
        """Add the frame just made (None: the row ended); the codes [T, 16] of a chunk to decode now, if one
        is due (its PCM is the stream's next audio)."""
        if frame is not None:
            self.pending.append(frame)
        if not self.urgent or not self.pending:
            return None
        if len(self.pending) >= self.wanted or self.row.done:
            chunk, self.pending = self.pending[: self.wanted], self.pending[self.wanted :]
            self.wanted = next(self.schedule, self.wanted)
            return torch.stack(chunk)
        return None

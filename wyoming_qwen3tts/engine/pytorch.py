"""The PyTorch CPU backend: Qwen3-TTS on the qwen-tts model classes.

Loads a 12 Hz checkpoint from a local directory, builds the voice catalog for
its kind (preset speakers, clones, designs) and turns one sentence at a time
into 16-bit PCM.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch

from ..cpu import default_threads
from ..qwen_import import import_qwen_tts
from ..settings import Settings
from ..voices import (
    ClonePromptCache,
    ModelVoices,
    StoredPrompt,
    VoiceCatalog,
    VoiceEntry,
    VoiceError,
    model_fingerprint,
    prompt_key,
)
from .base import Engine, EngineError, Voice
from .checkpoint_pages import CheckpointPages, release_checkpoint_pages
from .decoder import StreamingDecoder
from .loop import FrameGenerator, TalkerPrompt, capture_prompt, keep_float
from .precision import Precision, choose_precision
from .quantize import KERNELS

_LOGGER = logging.getLogger(__name__)

# Speech runs at roughly one 80 ms frame per Latin character and up to three
# per CJK character; the cap stops a model that runs away, not a slow speaker.
FRAMES_PER_CHAR = 4
MIN_FRAME_CAP = 50
MAX_FRAME_CAP = 3000  # 4 minutes of speech in one sentence; the talker's positions must fit the prompt too
# Frames per decoded chunk: the first is one frame (80 ms of speech) for fast first audio, later ones
# larger, as the codec decodes a frame for less when it gets several at once. Measured on the 0.6B
# dimensions, 2 threads: 122 ms a frame in 1-frame chunks, 85 in 2, 70 in 3, 64 in 8; first audio of
# a one-sentence prompt 397 ms with a 1-frame first chunk against 645 ms with a 2-frame one.
CHUNK_SCHEDULE = (1, 3, 8)


def configure_threads(settings: Settings) -> int:
    """Set torch's thread pools from the settings; return the intra-op thread count."""
    threads = settings.threads or default_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(max(1, settings.interop_threads))
    except RuntimeError:  # only settable before the first parallel op; keep what is there
        _LOGGER.debug("Inter-op threads already fixed at %s", torch.get_num_interop_threads())
    return threads


def _cast(module: torch.nn.Module, dtype: torch.dtype, keep: tuple[torch.nn.Module, ...] = ()) -> None:
    """Cast module's floating parameters and buffers to dtype, except inside the modules in keep."""
    kept = {id(t) for m in keep for t in (*m.parameters(), *m.buffers())}
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point() and id(tensor) not in kept and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)


def apply_precision(model: Any, precision: Precision) -> FrameGenerator:
    """Give each part of a loaded model the formats precision names (see engine/precision.py).

    Returns the frame generator, which takes over (and, for int8, quantizes) the
    talker's and code predictor's projections.
    """
    talker = model.talker
    # The text embedding (151936 x 2048) and its projection only build prompts: they keep the load dtype.
    # The speaker encoder follows the talker: qwen-tts casts its input to the model's (first) dtype.
    keep: tuple[torch.nn.Module, ...] = (talker.model.text_embedding, talker.text_projection)
    if precision.int8_kernel:
        # Quantized straight from the loaded weights: casting them to float32 first would double the
        # peak memory of loading for weights that are about to become int8.
        predictor = talker.code_predictor
        stacks = (talker.model.layers, predictor.model.layers, predictor.lm_head, talker.codec_head)
        keep += tuple(m for stack in stacks for m in stack.modules() if isinstance(m, torch.nn.Linear))
    pages = CheckpointPages()  # what transformers mapped; from here on its pages are only read
    _cast(model, getattr(torch, precision.compute_dtype), keep=keep)
    _cast(model.speech_tokenizer.model.decoder, getattr(torch, precision.codec_dtype))
    pages.release()
    convert = KERNELS[precision.int8_kernel] if precision.int8_kernel else keep_float

    def make_linear(linear: torch.nn.Linear) -> torch.nn.Module:
        # Each converted layer's checkpoint pages go at once, so they never pile up into the peak.
        converted = convert(linear)
        pages.release()
        return converted

    return FrameGenerator(model, make_linear)


@dataclass(frozen=True)
class ClonePrompt:
    """What a cloned voice speaks with: qwen-tts's prompt item, and the codec state after its reference.

    A request keeps its Voice, and so this, even when the voices directory
    changes while it speaks.
    """

    key: str  # the clone prompt cache key: content of the audio, transcript, mode, model
    item: Any  # qwen_tts.VoiceClonePromptItem
    primed: StreamingDecoder | None  # in-context mode: a decoder that has heard the reference codes


def follows_instructions(model: Any) -> bool:
    """False where qwen-tts's generate_custom_voice drops instruct: `tts_model_size in "0b6"` (0.6B)."""
    size = model.tts_model_size
    return not (isinstance(size, str) and size in "0b6")


def to_pcm16(waveform: np.ndarray | torch.Tensor) -> bytes:
    """Float audio in [-1, 1] to little-endian 16-bit PCM bytes."""
    clipped = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


class PyTorchEngine(Engine):
    """Qwen3-TTS on plain PyTorch."""

    def __init__(self, model_dir: Path, settings: Settings) -> None:
        qwen_tts = import_qwen_tts()
        self._settings = settings
        threads = configure_threads(settings)
        try:
            self.precision = choose_precision(settings)
        except ValueError as err:
            raise EngineError(str(err), "bad-settings") from None
        started = time.monotonic()
        self._tts = qwen_tts.Qwen3TTSModel.from_pretrained(
            str(model_dir), dtype=getattr(torch, self.precision.load_dtype), attn_implementation=settings.attn
        )
        model = self._tts.model.eval()
        self.frame_generator = apply_precision(model, self.precision)
        self._kind: str = model.tts_model_type
        self._languages = [lang for lang in model.get_supported_languages() if lang != "auto"]
        _LOGGER.info(
            "Loaded %s (%s; %s) in %.1f s with %d threads",
            model_dir,
            self._kind,
            self.precision.describe(),
            time.monotonic() - started,
            threads,
        )
        self._codec = model.speech_tokenizer.model.decoder
        # Built once: its per-module tables (polyphase weights) are shared by every copy().
        self._fresh_decoder = StreamingDecoder(self._codec)
        self._clone_prompts: dict[str, ClonePrompt] = {}  # by cache key: voices with the same audio share one
        self._prompt_cache = ClonePromptCache(settings.data_dir / "voice-cache")
        self._fingerprint: str | None = None  # of the encoders that make clone prompts, once one is needed
        self._catalog = self._load_voices(settings)
        release_checkpoint_pages()  # what the encoders read to build and fingerprint clone prompts
        if not self._catalog.voices():
            raise EngineError(
                f"the {self._kind} model at {model_dir} has no voices: a Base model clones the voices in "
                "--voices-dir (NAME.wav + NAME.txt, or voices.json); add at least one",
                "no-voices",
            )

    def _decoder_for(self, voice: Voice) -> StreamingDecoder:
        """A decoder for one utterance; a cloned voice's starts from its decoded reference codes."""
        primed = voice.clone_prompt.primed if isinstance(voice.clone_prompt, ClonePrompt) else None
        return (primed or self._fresh_decoder).copy()

    @property
    def model_kind(self) -> str:
        return self._kind

    def languages(self) -> Sequence[str]:
        return self._languages

    def voices(self) -> Sequence[Voice]:
        return self._catalog.voices()

    def reload_voices(self) -> bool:
        """Rebuild the voices if a file of --voices-dir changed (a stat per file when nothing did)."""
        if not self._catalog.reload():
            return False
        in_use = {
            v.clone_prompt.key for v in self._catalog.voices() if isinstance(v.clone_prompt, ClonePrompt)
        }
        self._clone_prompts = {key: p for key, p in self._clone_prompts.items() if key in in_use}
        release_checkpoint_pages()
        return True

    def _load_voices(self, settings: Settings) -> VoiceCatalog:
        model = self._tts.model
        custom = self._kind == "custom_voice"
        capabilities = ModelVoices(
            kind=self._kind,
            languages=tuple(self._languages),
            speakers=tuple(model.get_supported_speakers() or ()) if custom else (),
            dialects=dict(model.config.talker_config.spk_is_dialect or {}) if custom else {},
            follows_instructions=follows_instructions(model),
        )
        catalog = VoiceCatalog(capabilities, settings.voices_dir, self._clone_prompt)
        catalog.load()
        return catalog

    def _clone_prompt(self, entry: VoiceEntry) -> ClonePrompt:
        """The prompt of a cloned voice: from memory, else from the disk cache, else built by the model."""
        assert entry.audio is not None
        audio = entry.audio.read_bytes()
        if self._fingerprint is None:
            model = self._tts.model
            encoders = [
                ("speaker_encoder", model.speaker_encoder),
                ("codec_encoder", model.speech_tokenizer.model.encoder),
            ]
            self._fingerprint = model_fingerprint(encoders)
        key = prompt_key(audio, entry.transcript, self._fingerprint)
        known = self._clone_prompts.get(key)
        if known is not None:
            return known
        started = time.monotonic()
        qwen_tts = import_qwen_tts()
        stored = self._prompt_cache.load(key)
        if stored is not None:
            item = qwen_tts.VoiceClonePromptItem(
                ref_code=stored.ref_code,
                ref_spk_embedding=stored.ref_spk_embedding,
                x_vector_only_mode=stored.ref_code is None,
                icl_mode=stored.ref_code is not None,
                ref_text=stored.ref_text,
            )
            source = "read from the cache"
        else:
            # Decoded from the bytes the key was made of, the way qwen-tts reads a file (librosa, own rate).
            try:
                waveform, rate = librosa.load(io.BytesIO(audio), sr=None, mono=True)
            except Exception as err:  # soundfile and audioread raise their own kinds
                reason = getattr(err, "error_string", None) or err
                raise VoiceError(
                    entry.audio, entry.name, f"cannot be read as audio ({reason}); use wav, flac, ogg or mp3"
                ) from None
            item = self._tts.create_voice_clone_prompt(
                ref_audio=(waveform, int(rate)),
                ref_text=entry.transcript,
                x_vector_only_mode=entry.transcript is None,
            )[0]
            self._prompt_cache.save(
                key, StoredPrompt(item.ref_spk_embedding, item.ref_code, item.ref_text), entry.name
            )
            source = "built"
        primed = None
        if item.ref_code is not None:
            # In-context cloning continues the reference audio: the codec must hear it first.
            # Decode it once here and start every request from that state.
            primed = self._fresh_decoder.copy()
            primed.decode(item.ref_code)
        prompt = ClonePrompt(key, item, primed)
        self._clone_prompts[key] = prompt
        _LOGGER.info("Voice %s: clone prompt %s in %.2f s", entry.name, source, time.monotonic() - started)
        return prompt

    def frame_cap(self, text: str) -> int:
        """Most frames one sentence may produce: --max-frames, else derived from its length."""
        derived = min(MAX_FRAME_CAP, MIN_FRAME_CAP + FRAMES_PER_CHAR * len(text))
        return min(self._settings.max_frames, derived) if self._settings.max_frames else derived

    def _sampling(self) -> dict:
        if self._settings.greedy:
            return {"do_sample": False, "subtalker_dosample": False}
        return {}

    def _stock_call(self, text: str, voice: Voice, language: str) -> Callable[[], Any]:
        """The qwen-tts generate_* call for this voice, for capture_prompt to take its prompt from.

        It never runs whole here: the frame generator has taken over the talker's layers.
        """
        tts = self._tts
        kwargs = self._sampling()
        if voice.kind == "preset":
            return lambda: tts.generate_custom_voice(
                text=text, speaker=voice.speaker, language=language, instruct=voice.instruct, **kwargs
            )
        if voice.kind == "clone":
            return lambda: tts.generate_voice_clone(
                text=text, language=language, voice_clone_prompt=[voice.clone_prompt.item], **kwargs
            )
        if voice.kind == "design":
            return lambda: tts.generate_voice_design(
                text=text, instruct=voice.instruct or "", language=language, **kwargs
            )
        raise EngineError(f"voice {voice.name} has unknown kind {voice.kind!r}", "bad-voice")

    def prompt(self, text: str, voice: Voice, language: str) -> TalkerPrompt:
        """The talker prompt qwen-tts builds for this text, voice and language."""
        return capture_prompt(self._tts.model, self._stock_call(text, voice, language))

    def frames(self, text: str, voice: Voice, language: str) -> Iterator[torch.Tensor]:
        """The frames of codes for text, each as soon as it exists."""
        return self.frame_generator.frames(self.prompt(text, voice, language), self.frame_cap(text))

    def synthesize(self, text: str, voice: Voice, language: str) -> Iterator[bytes]:
        decoder = self._decoder_for(voice)
        pending: list[torch.Tensor] = []
        schedule = iter(CHUNK_SCHEDULE)
        wanted = next(schedule)
        for frame in self.frames(text, voice, language):
            pending.append(frame)
            if len(pending) >= wanted:
                yield to_pcm16(decoder.decode(torch.stack(pending)))
                pending, wanted = [], next(schedule, wanted)
        if pending:
            yield to_pcm16(decoder.decode(torch.stack(pending)))

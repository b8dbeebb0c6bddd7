"""The PyTorch CPU backend: Qwen3-TTS on the qwen-tts model classes.

Loads a 12 Hz checkpoint from a local directory, builds the voice catalog for
its kind (preset speakers, clones, designs) and turns one sentence at a time
into 16-bit PCM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..cpu import usable_cores
from ..qwen_import import import_qwen_tts
from ..settings import Settings
from ..voices import DEFAULT_DESIGN_INSTRUCTION, preset_voices, read_voices_dir
from .base import Engine, EngineError, Voice

_LOGGER = logging.getLogger(__name__)

FRAMES_PER_SECOND = 12.5
# Speech runs at roughly one 80 ms frame per Latin character and up to three
# per CJK character; the cap stops a model that runs away, not a slow speaker.
FRAMES_PER_CHAR = 4
MIN_FRAME_CAP = 50


def configure_threads(settings: Settings) -> int:
    """Set torch's thread pools from the settings; return the intra-op thread count."""
    import torch

    threads = settings.threads or usable_cores()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(max(1, settings.interop_threads))
    except RuntimeError:  # only settable before the first parallel op; keep what is there
        _LOGGER.debug("Inter-op threads already fixed at %s", torch.get_num_interop_threads())
    return threads


def to_pcm16(waveform: np.ndarray) -> bytes:
    """Float audio in [-1, 1] to little-endian 16-bit PCM bytes."""
    clipped = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


class PyTorchEngine(Engine):
    """Qwen3-TTS on plain PyTorch."""

    def __init__(self, model_dir: Path, settings: Settings) -> None:
        import torch

        qwen_tts = import_qwen_tts()
        self._settings = settings
        threads = configure_threads(settings)
        dtype_name = settings.resolved_dtype()
        started = time.monotonic()
        self._tts = qwen_tts.Qwen3TTSModel.from_pretrained(
            str(model_dir), dtype=getattr(torch, dtype_name), attn_implementation=settings.attn
        )
        self._tts.model.eval()
        model = self._tts.model
        self._kind: str = model.tts_model_type
        self._languages = [lang for lang in model.get_supported_languages() if lang != "auto"]
        _LOGGER.info(
            "Loaded %s (%s, %s) in %.1f s with %d threads",
            model_dir,
            self._kind,
            dtype_name,
            time.monotonic() - started,
            threads,
        )
        self._voices = self._build_voices(settings.voices_dir)
        if not self._voices:
            raise EngineError(
                f"the {self._kind} model at {model_dir} has no voices: a Base model clones the voices in "
                "--voices-dir (NAME.wav + NAME.txt); add at least one",
                "no-voices",
            )

    @property
    def model_kind(self) -> str:
        return self._kind

    def languages(self) -> Sequence[str]:
        return self._languages

    def voices(self) -> Sequence[Voice]:
        return self._voices

    def _build_voices(self, voices_dir: Path | None) -> list[Voice]:
        model = self._tts.model
        entries = read_voices_dir(voices_dir, self._languages) if voices_dir else []
        if self._kind == "custom_voice":
            dialects = dict(model.config.talker_config.spk_is_dialect or {})
            return preset_voices(list(model.get_supported_speakers()), dialects)
        if self._kind == "voice_design":
            designs = [
                Voice(e.name, "design", e.description or e.instruct, e.languages, instruct=e.instruct)
                for e in entries
                if e.instruct
            ]
            return designs or [Voice("default", "design", DEFAULT_DESIGN_INSTRUCTION, instruct=DEFAULT_DESIGN_INSTRUCTION)]
        clones = []
        for entry in entries:
            if entry.audio is None:
                continue
            started = time.monotonic()
            try:
                prompt = self._tts.create_voice_clone_prompt(
                    ref_audio=str(entry.audio),
                    ref_text=entry.transcript,
                    x_vector_only_mode=entry.transcript is None,
                )[0]
            except Exception as err:
                raise EngineError(f"voice {entry.name}: cannot read {entry.audio}: {err}", "bad-voice") from err
            mode = "reference audio + transcript" if entry.transcript else "reference audio only"
            clones.append(
                Voice(
                    entry.name,
                    "clone",
                    entry.description or f"{entry.name} (cloned from {mode})",
                    entry.languages,
                    clone_prompt=prompt,
                )
            )
            _LOGGER.info("Voice %s: clone prompt built in %.2f s", entry.name, time.monotonic() - started)
        return clones

    def frame_cap(self, text: str) -> int:
        """Most frames one sentence may produce: --max-frames, else derived from its length."""
        derived = MIN_FRAME_CAP + FRAMES_PER_CHAR * len(text)
        return min(self._settings.max_frames, derived) if self._settings.max_frames else derived

    def _sampling(self) -> dict:
        if self._settings.greedy:
            return {"do_sample": False, "subtalker_dosample": False}
        return {}

    def synthesize(self, text: str, voice: Voice, language: str) -> Iterator[bytes]:
        import torch

        kwargs = {"max_new_tokens": self.frame_cap(text), **self._sampling()}
        with torch.inference_mode():
            if voice.kind == "preset":
                wavs, _ = self._tts.generate_custom_voice(
                    text=text, speaker=voice.speaker, language=language, instruct=voice.instruct, **kwargs
                )
            elif voice.kind == "clone":
                wavs, _ = self._tts.generate_voice_clone(
                    text=text, language=language, voice_clone_prompt=[voice.clone_prompt], **kwargs
                )
            elif voice.kind == "design":
                wavs, _ = self._tts.generate_voice_design(
                    text=text, instruct=voice.instruct or "", language=language, **kwargs
                )
            else:
                raise EngineError(f"voice {voice.name} has unknown kind {voice.kind!r}", "bad-voice")
        yield to_pcm16(wavs[0])

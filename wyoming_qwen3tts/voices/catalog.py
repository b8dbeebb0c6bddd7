"""The voices a loaded model serves, rebuilt when the voices directory changes.

The model decides which kinds of voice it can speak: a CustomVoice model its
preset speakers (and named presets with a style instruction), a Base model
voices cloned from reference audio, a VoiceDesign model written instructions.
A voice of another kind is skipped with a log line. The catalog is swapped
whole after a rebuild, so a request holds on to the Voice it started with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .directory import VoiceScan, VoicesDirectory
from .entry import VoiceEntry, VoiceError
from .voice import Voice

_LOGGER = logging.getLogger(__name__)

# The native language of each CustomVoice preset speaker (the model card's table).
PRESET_NATIVE_LANGUAGE = {
    "vivian": "chinese",
    "serena": "chinese",
    "uncle_fu": "chinese",
    "dylan": "chinese",
    "eric": "chinese",
    "ryan": "english",
    "aiden": "english",
    "ono_anna": "japanese",
    "sohee": "korean",
}
DEFAULT_DESIGN_INSTRUCTION = "A clear, warm and natural voice, speaking at a calm, even pace."

MODEL_KIND_NAMES = {"custom_voice": "CustomVoice", "base": "Base", "voice_design": "VoiceDesign"}
# entry kind -> the model kind that speaks it, and how to say what it is
ENTRY_KINDS = {
    "preset": ("custom_voice", "a CustomVoice preset speaker"),
    "clone": ("base", "a voice cloned from reference audio"),
    "design": ("voice_design", "a VoiceDesign instruction"),
}


@dataclass(frozen=True)
class ModelVoices:
    """What the loaded model can speak."""

    kind: str  # "custom_voice", "base" or "voice_design"
    languages: tuple[str, ...]  # model language names, without "auto"
    speakers: tuple[str, ...] = ()  # CustomVoice preset speakers
    dialects: Mapping[str, str | bool] = field(default_factory=dict)  # speaker -> dialect it speaks
    follows_instructions: bool = True  # False: a 0.6B CustomVoice model drops a preset's instruct


def preset_voices(speakers: tuple[str, ...] | list[str], dialects: Mapping[str, str | bool]) -> list[Voice]:
    """One Voice per CustomVoice speaker, sorted by name."""
    voices = []
    for speaker in sorted(speakers):
        native = PRESET_NATIVE_LANGUAGE.get(speaker)
        dialect = dialects.get(speaker)
        detail = f", native {native}" if native else ""
        if dialect:
            detail += f" ({str(dialect).replace('_', ' ')})"
        voices.append(
            Voice(
                name=speaker,
                kind="preset",
                description=f"{speaker.replace('_', ' ').title()} (preset speaker{detail})",
                speaker=speaker,
            )
        )
    return voices


class VoiceCatalog:
    """The model's voices and those of the voices directory, in the order clients see them.

    voices.json's voices come first (in file order), then the per-file voices by
    name, then the model's own preset speakers; the first is the default voice.
    clone turns a clone entry into the backend's prompt object (it may run the
    model, so load() and reload() belong on the inference thread).
    """

    def __init__(
        self, model: ModelVoices, voices_dir: Path | None, clone: Callable[[VoiceEntry], Any]
    ) -> None:
        self.model = model
        self.directory = VoicesDirectory(voices_dir, model.languages) if voices_dir is not None else None
        self._clone = clone
        self._voices: tuple[Voice, ...] = ()

    def voices(self) -> tuple[Voice, ...]:
        return self._voices

    def load(self) -> None:
        """Build the catalog at start-up; a broken voice definition raises VoiceError."""
        self._voices = self._build(strict=True)

    def reload(self) -> bool:
        """Rebuild the catalog if a file of the voices directory changed; True if it was rebuilt.

        Broken voices are logged and keep their previous version (new ones are left out).
        """
        if self.directory is None or not self.directory.changed():
            return False
        before = {voice.name: voice for voice in self._voices}
        self._voices = self._build(strict=False)
        after = {voice.name: voice for voice in self._voices}
        added = [name for name in after if name not in before]
        removed = [name for name in before if name not in after]
        changed = [
            name
            for name in after
            if name in before
            and (after[name] != before[name] or after[name].clone_prompt is not before[name].clone_prompt)
        ]
        _LOGGER.log(
            logging.INFO if added or removed or changed else logging.DEBUG,
            "Voices directory changed: %s added, %s removed, %s changed; voices now: %s",
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
            ", ".join(changed) or "none",
            ", ".join(after) or "none",
        )
        if not self._voices:
            _LOGGER.warning("No voices left: requests fail until a voice is added to %s", self.directory.path)
        return True

    def _build(self, strict: bool) -> tuple[Voice, ...]:
        scan = self.directory.scan() if self.directory is not None else VoiceScan()
        previous = {voice.name: voice for voice in self._voices}
        voices: list[Voice] = []
        for problem in scan.problems:
            if strict:
                raise problem
            if problem.voice is None:
                outcome = "the voices it defined keep their last good version"
            elif problem.voice in scan.kept:
                outcome = "keeping its last good version"
            else:
                outcome = "the voice is left out"
            _LOGGER.warning("%s (%s)", problem, outcome)
        for entry in scan.entries:
            if not self._fits(entry):
                continue
            try:
                voices.append(self._voice(entry))
            except VoiceError as err:
                if strict:
                    raise
                kept = previous.get(entry.name)
                _LOGGER.warning(
                    "%s (%s)", err, "keeping its last good version" if kept else "the voice is left out"
                )
                if kept is not None:
                    voices.append(kept)
        voices.extend(self._model_voices(voices))
        return tuple(_unique(voices))

    def _fits(self, entry: VoiceEntry) -> bool:
        """Whether this model speaks the entry's kind; a log line says why not."""
        if not entry.kind:
            _LOGGER.warning(
                "Voice %s (%s) is skipped: it has no audio, speaker or instruct to speak with",
                entry.name,
                entry.source,
            )
            return False
        # A per-file voice may hold audio and an instruct: a VoiceDesign model speaks the instruct.
        if self.model.kind == "voice_design" and entry.instruct and not entry.speaker:
            return True
        wanted, what = ENTRY_KINDS[entry.kind]
        if wanted == self.model.kind:
            return True
        _LOGGER.warning(
            "Voice %s (%s) is skipped: it is %s, which this %s model cannot speak; load a %s model for it",
            entry.name,
            entry.source,
            what,
            MODEL_KIND_NAMES.get(self.model.kind, self.model.kind),
            MODEL_KIND_NAMES[wanted],
        )
        return False

    def _voice(self, entry: VoiceEntry) -> Voice:
        if self.model.kind == "custom_voice":
            return self._preset(entry)
        if self.model.kind == "voice_design":
            instruct = entry.instruct or ""
            return Voice(
                entry.name, "design", entry.description or instruct, entry.languages, instruct=instruct
            )
        try:
            prompt = self._clone(entry)
        except VoiceError:
            raise
        except Exception as err:  # whatever qwen-tts, librosa or soundfile raise for audio they cannot use
            raise VoiceError(
                entry.audio or entry.source,
                entry.name,
                f"no clone prompt could be built from it ({type(err).__name__}: {err}); "
                "use clear speech of 3 to 15 s as wav, flac, ogg or mp3",
            ) from err
        mode = "reference audio + transcript" if entry.transcript else "reference audio only"
        return Voice(
            entry.name,
            "clone",
            entry.description or f"{entry.name} (cloned from {mode})",
            entry.languages,
            clone_prompt=prompt,
        )

    def _preset(self, entry: VoiceEntry) -> Voice:
        speakers = {speaker.casefold(): speaker for speaker in self.model.speakers}
        speaker = speakers.get((entry.speaker or "").casefold())
        if speaker is None:
            raise VoiceError(
                entry.source,
                entry.name,
                f"speaker {entry.speaker!r} is not one of this model's; use one of "
                f"{', '.join(sorted(speakers.values()))}",
            )
        instruct = entry.instruct
        if instruct and not self.model.follows_instructions:
            _LOGGER.warning(
                "Voice %s (%s): this 0.6B CustomVoice model ignores style instructions, so it speaks as the "
                "plain preset %s without %r; a 1.7B CustomVoice model follows them",
                entry.name,
                entry.source,
                speaker,
                instruct,
            )
            instruct = None
        style = f", {instruct}" if instruct else ""
        return Voice(
            entry.name,
            "preset",
            entry.description or f"{entry.name} ({speaker}{style})",
            entry.languages,
            speaker=speaker,
            instruct=instruct,
        )

    def _model_voices(self, configured: list[Voice]) -> list[Voice]:
        """The model's own voices: its preset speakers, or one default design if none is configured."""
        if self.model.kind == "custom_voice":
            return preset_voices(self.model.speakers, self.model.dialects)
        if self.model.kind == "voice_design" and not configured:
            return [
                Voice("default", "design", DEFAULT_DESIGN_INSTRUCTION, instruct=DEFAULT_DESIGN_INSTRUCTION)
            ]
        return []


def _unique(voices: list[Voice]) -> list[Voice]:
    """The first voice of each name (any case): a configured voice shadows a preset of its name."""
    seen: set[str] = set()
    unique = []
    for voice in voices:
        key = voice.name.casefold()
        if key not in seen:
            seen.add(key)
            unique.append(voice)
    return unique

"""One voice as the voices directory describes it, and the error that names a broken one.

The directory (per-file voices and voices.json) is read into VoiceEntry values
before any model work: reading is cheap and can be repeated on every change,
while turning an entry into a speakable Voice may need the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..languages import to_model_language
from ..requests import EngineError

VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = (
    "names may hold only letters, digits, '_', '.' and '-' (up to 64, starting with a letter or digit)"
)


class VoiceError(EngineError):
    """A voice that cannot be loaded; the message names the file, the voice and the fix."""

    def __init__(self, path: Path, voice: str | None, problem: str) -> None:
        where = f"{path}: voice {voice!r}" if voice else str(path)
        super().__init__(f"{where}: {problem}", "bad-voice")
        self.path = path
        self.voice = voice


@dataclass(frozen=True)
class VoiceEntry:
    """A named voice read from the voices directory, before the model turns it into a Voice.

    What it holds decides the kind: a speaker makes a CustomVoice preset (with an
    optional style instruct), audio makes a Base clone (in-context with a
    transcript, speaker-embedding only without), an instruct alone makes a
    VoiceDesign voice. source is the file that defines it, for log lines.
    """

    name: str
    source: Path
    speaker: str | None = None
    audio: Path | None = None
    transcript: str | None = None
    instruct: str | None = None
    languages: tuple[str, ...] = ()  # model language names ("english"); empty: every language
    description: str = ""

    @property
    def kind(self) -> str:
        """ "preset", "clone", "design", or "" when it holds none of speaker, audio and instruct."""
        if self.speaker:
            return "preset"
        if self.audio:
            return "clone"
        if self.instruct:
            return "design"
        return ""


def parse_languages(raw: object, model_languages: tuple[str, ...], path: Path, voice: str) -> tuple[str, ...]:
    """A voice's "language"/"languages" value ("en", ["en", "de"], "german") as model language names."""
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise VoiceError(
            path, voice, 'languages must be a code or a list of codes, e.g. "en" or ["en", "de"]'
        )
    languages = []
    for value in values:
        language = to_model_language(value, model_languages)
        if language is None or language == "auto":
            raise VoiceError(
                path,
                voice,
                f"language {value!r} is not one this model speaks; use one of "
                f"{', '.join(model_languages)} (or their codes: en, de, ...)",
            )
        if language not in languages:
            languages.append(language)
    return tuple(languages)

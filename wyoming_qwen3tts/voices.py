"""The voice catalog: what a request may ask for, read from the model and the voices directory.

A CustomVoice model brings its preset speakers; a Base model clones voices from
reference audio in --voices-dir; a VoiceDesign model speaks the instructions
found there. Request names are only ever looked up in the catalog built here:
no name from a client is turned into a path.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .engine.base import EngineError, Voice
from .languages import to_model_language

_LOGGER = logging.getLogger(__name__)

VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")

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


@dataclass(frozen=True)
class VoiceEntry:
    """One voice as the voices directory describes it, before the model turns it into a Voice."""

    name: str
    audio: Path | None = None
    transcript: str | None = None
    languages: tuple[str, ...] = ()
    description: str = ""
    instruct: str | None = None


def preset_voices(speakers: list[str], dialects: dict[str, str | bool]) -> list[Voice]:
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


def _read_options(path: Path) -> dict:
    try:
        options = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EngineError(f"voice options {path} are not valid JSON: {err}", "bad-voice") from None
    if not isinstance(options, dict):
        raise EngineError(f"voice options {path} must be a JSON object", "bad-voice")
    return options


def read_voices_dir(voices_dir: Path, model_languages: list[str]) -> list[VoiceEntry]:
    """Every voice in the directory: NAME.wav (+ NAME.txt transcript) and/or NAME.json options.

    NAME.json may hold "language" (or "languages"), "description" and, for a
    VoiceDesign model, "instruct". Files with names outside [A-Za-z0-9_.-] are skipped.
    """
    names = sorted({p.stem for p in voices_dir.iterdir() if p.suffix in (*AUDIO_SUFFIXES, ".json")})
    entries = []
    for name in names:
        if not VOICE_NAME.match(name):
            _LOGGER.warning("Skipping voice %r: names may hold only letters, digits, '_', '.' and '-'", name)
            continue
        audio = next(
            (voices_dir / f"{name}{s}" for s in AUDIO_SUFFIXES if (voices_dir / f"{name}{s}").is_file()), None
        )
        transcript_path = voices_dir / f"{name}.txt"
        transcript = (
            transcript_path.read_text(encoding="utf-8").strip() if transcript_path.is_file() else None
        )
        options_path = voices_dir / f"{name}.json"
        options = _read_options(options_path) if options_path.is_file() else {}
        raw_languages = options.get("languages", options.get("language", []))
        if isinstance(raw_languages, str):
            raw_languages = [raw_languages]
        languages = []
        for raw in raw_languages:
            language = to_model_language(str(raw), model_languages)
            if language is None or language == "auto":
                raise EngineError(
                    f"voice {name}: language {raw!r} is not one the model speaks "
                    f"({', '.join(model_languages)})",
                    "bad-voice",
                )
            languages.append(language)
        entries.append(
            VoiceEntry(
                name=name,
                audio=audio,
                transcript=transcript or None,
                languages=tuple(languages),
                description=str(options.get("description", "")),
                instruct=options.get("instruct"),
            )
        )
    return entries

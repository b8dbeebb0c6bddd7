"""voices.json: one file in the voices directory that names voices of every kind.

JSON rather than TOML or YAML: the standard library reads it on every Python
this server supports (tomllib needs 3.11) and YAML would be a new dependency.
JSON has no comments, so keys starting with "_" are ignored anywhere.

    {"voices": {
        "kitchen":  {"speaker": "ryan", "instruct": "Cheerful and quick", "language": "en"},
        "grandma":  {"audio": "grandma.wav", "transcript": "Hello dear.", "languages": ["de", "en"]},
        "grandpa":  {"audio": "recordings/grandpa.flac", "description": "Grandpa (speaker embedding)"},
        "narrator": {"instruct": "A warm, calm, middle-aged female voice", "language": "en"}
    },
    "openai_voices": {"alloy": "grandma", "onyx": "kitchen"}}

Paths are relative to the voices directory and must stay inside it; no name a
client sends is ever turned into a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .entry import NAME_RULE, VOICE_NAME, VoiceEntry, VoiceError, parse_languages

CONFIG_NAME = "voices.json"
TOP_LEVEL_KEYS = ("voices", "openai_voices")  # openai_voices: OpenAI voice name -> voice (HTTP API)
TEXT_KEYS = ("speaker", "instruct", "audio", "transcript", "transcript_file", "description")
KEYS = (*TEXT_KEYS, "language", "languages")
KINDS_HINT = (
    'give it "speaker" (a CustomVoice preset), "audio" (a Base clone) '
    'or only "instruct" (a VoiceDesign voice)'
)


@dataclass
class ConfigVoices:
    """What voices.json defines: good entries in file order, and one problem per broken voice."""

    entries: list[VoiceEntry] = field(default_factory=list)
    problems: list[VoiceError] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # every voice name in the file, broken ones too


def read_config(path: Path, model_languages: tuple[str, ...]) -> ConfigVoices:
    """Read voices.json; raises VoiceError when the file as a whole cannot be read."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_refuse_duplicate_keys)
    except OSError as err:
        raise VoiceError(path, None, f"cannot be read ({err.strerror or err})") from None
    except ValueError as err:
        raise VoiceError(
            path, None, f"is not valid JSON ({err}); fix it or check it with a JSON linter"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("voices"), dict):
        raise VoiceError(path, None, 'must hold one object {"voices": {"NAME": {...}, ...}}')
    unknown = [key for key in document if key not in TOP_LEVEL_KEYS and not key.startswith("_")]
    if unknown:
        raise VoiceError(
            path,
            None,
            f"unknown top-level key {unknown[0]!r}; only {' and '.join(map(repr, TOP_LEVEL_KEYS))}",
        )
    config = ConfigVoices()
    for name, options in document["voices"].items():
        if name.startswith("_"):
            continue
        config.names.append(name)
        try:
            config.entries.append(_entry(path, name, options, model_languages))
        except VoiceError as err:
            config.problems.append(err)
    return config


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _entry(path: Path, name: str, options: Any, model_languages: tuple[str, ...]) -> VoiceEntry:
    if not VOICE_NAME.match(name):
        raise VoiceError(path, name, f"not a usable voice name: {NAME_RULE}")
    if not isinstance(options, dict):
        raise VoiceError(path, name, 'must be an object such as {"speaker": "ryan"}')
    options = {key: value for key, value in options.items() if not key.startswith("_")}
    unknown = sorted(set(options) - set(KEYS))
    if unknown:
        raise VoiceError(path, name, f"unknown key {unknown[0]!r}; a voice may have {', '.join(KEYS)}")
    for key in TEXT_KEYS:
        if key in options and (not isinstance(options[key], str) or not options[key].strip()):
            raise VoiceError(path, name, f"{key} must be a non-empty string")
    text = {key: options[key].strip() for key in TEXT_KEYS if key in options}
    if "language" in options and "languages" in options:
        raise VoiceError(path, name, 'give either "language" or "languages", not both')
    raw_languages = options.get("languages", options.get("language", []))
    languages = parse_languages(raw_languages, model_languages, path, name)

    speaker, audio, instruct = text.get("speaker"), text.get("audio"), text.get("instruct")
    if speaker and audio:
        raise VoiceError(path, name, 'has both "speaker" and "audio"; ' + KINDS_HINT)
    if audio and instruct:
        raise VoiceError(
            path, name, 'a cloned voice ("audio") takes no "instruct": Base models have no style instructions'
        )
    if not (speaker or audio or instruct):
        raise VoiceError(path, name, "says nothing to speak with; " + KINDS_HINT)
    if ("transcript" in text or "transcript_file" in text) and not audio:
        raise VoiceError(
            path, name, 'a transcript belongs to reference "audio"; add it or drop the transcript'
        )
    if "transcript" in text and "transcript_file" in text:
        raise VoiceError(path, name, 'give either "transcript" or "transcript_file", not both')

    audio_path = inside_voices_dir(path, name, "audio", audio) if audio else None
    transcript = text.get("transcript")
    if "transcript_file" in text:
        transcript_path = inside_voices_dir(path, name, "transcript_file", text["transcript_file"])
        try:
            transcript = transcript_path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise VoiceError(path, name, f"cannot read transcript_file {transcript_path}: {err}") from None
        if not transcript:
            raise VoiceError(
                path, name, f"transcript_file {transcript_path} is empty; write the words spoken in the audio"
            )
    return VoiceEntry(
        name=name,
        source=path,
        speaker=speaker,
        audio=audio_path,
        transcript=transcript,
        instruct=instruct,
        languages=languages,
        description=text.get("description", ""),
    )


def inside_voices_dir(config_path: Path, voice: str, key: str, raw: str) -> Path:
    """raw resolved against the directory of config_path; refused unless it is a file inside it."""
    root = config_path.parent.resolve()
    resolved = (root / raw).resolve()
    if not resolved.is_relative_to(root):
        raise VoiceError(
            config_path,
            voice,
            f"{key} {raw!r} points outside the voices directory {root}; copy the file into it "
            "and give its path relative to that directory",
        )
    if not resolved.is_file():
        raise VoiceError(
            config_path, voice, f"{key} {raw!r} does not exist in {root}; put it there or fix the path"
        )
    return resolved


def read_openai_voices(path: Path) -> dict[str, str]:
    """voices.json's "openai_voices" (OpenAI voice name -> voice name), lower-cased; {} without one.

    Read by the HTTP API on its own: a broken voices.json is reported by the voice catalog.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    table = document.get("openai_voices") if isinstance(document, dict) else None
    if not isinstance(table, dict):
        return {}
    return {
        str(k).casefold(): v for k, v in table.items() if isinstance(v, str) and not str(k).startswith("_")
    }

"""OpenAI's model and voice names, and what they mean on this server.

Clients written for OpenAI send `model="tts-1"` and `voice="alloy"`. The model
name only selects a language where it ends in one (`tts-1-de`,
`tts-1-hd-german`); every name runs the one loaded model. An OpenAI voice
name speaks the preset speaker of the table below, unless a voice of the
server has that very name, or voices.json's "openai_voices" maps it
elsewhere; on a model without these presets (Base, VoiceDesign) it speaks the
default voice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..service import find_voice
from ..voices.voice import Voice

MODEL_NAMES = ("qwen3-tts", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
LANGUAGE_MODEL_PREFIXES = ("tts-1-hd-", "tts-1-")  # longest first

# OpenAI voice -> CustomVoice preset speaker, by gender and register where one fits.
OPENAI_VOICES = {
    "alloy": "vivian",
    "ash": "aiden",
    "ballad": "dylan",
    "cedar": "ryan",
    "coral": "serena",
    "echo": "ryan",
    "fable": "eric",
    "marin": "vivian",
    "nova": "serena",
    "onyx": "uncle_fu",
    "sage": "ono_anna",
    "shimmer": "sohee",
    "verse": "aiden",
}


class UnknownModel(ValueError):
    """A model name this server does not answer to."""


def language_of_model(model: str) -> str | None:
    """The language a model name selects ("tts-1-de" -> "de"), or None; UnknownModel if not ours."""
    name = model.strip().casefold()
    if name in MODEL_NAMES:
        return None
    for prefix in LANGUAGE_MODEL_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    raise UnknownModel(
        f"Unknown model {model!r}; use one of {', '.join(MODEL_NAMES)}, or tts-1-<language> (e.g. tts-1-de)"
    )


def voice_for(
    name: str, voices: Sequence[Voice], default: Voice, overrides: Mapping[str, str] | None = None
) -> Voice | None:
    """The voice a requested name means: a voice of that name, else its OpenAI mapping, else None."""
    own = find_voice(voices, name, name)
    if own is not None:
        return own
    wanted = name.strip().casefold()
    target = (overrides or {}).get(wanted) or OPENAI_VOICES.get(wanted)
    if target is None:
        return None
    return find_voice(voices, target, target) or default

"""What one request speaks, in order: sentences, and pauses where its SSML asks for silence.

An SSML document's breaks are capped one by one and in sum, so no request holds a connection with silence.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sentences import split_sentences
from .ssml import SsmlDocument

MAX_PAUSE_MS = 10_000  # longest pause (SSML itself suggests breaks up to 10 s; adjacent breaks add up)
MAX_SILENCE_MS = 60_000  # most silence one request may ask for with breaks


@dataclass(frozen=True)
class Pause:
    """Silence between sentences (an SSML break)."""

    milliseconds: int


Part = str | Pause  # a sentence to speak, or a pause


def ssml_parts(document: SsmlDocument, language: str) -> list[Part]:
    """An SSML document's sentences, with a pause wherever it has a break; say-as read in language."""
    parts: list[Part] = []
    silence_left = MAX_SILENCE_MS
    for segment in document.segments(language):
        parts.extend(split_sentences(segment.text))
        pause = min(segment.pause_ms, MAX_PAUSE_MS, silence_left)
        if pause > 0:
            parts.append(Pause(pause))
            silence_left -= pause
    return parts

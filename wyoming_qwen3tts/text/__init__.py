"""Text before synthesis: sentence splitting and normalisation into speakable words.

sentences: cuts one-shot or streamed text into sentences, so each can be synthesized as
soon as it is complete. normalize: writes numbers, dates, money, units, abbreviations and
markup out as a speaker of the language would say them. ssml: reads a request's SSML
document into text and pauses; parts: turns it into the sentences and pauses to speak.
`python -m wyoming_qwen3tts.text` prints what the normaliser makes of a text.
"""

from __future__ import annotations

from .normalize import LANGUAGES, guess_language, normalize, resolve_language
from .parts import Part, Pause, ssml_parts
from .sentences import SentenceBuffer, split_sentences
from .ssml import SsmlDocument, SsmlError, SsmlSegment, parse_ssml

__all__ = [
    "LANGUAGES",
    "Part",
    "Pause",
    "SentenceBuffer",
    "SsmlDocument",
    "SsmlError",
    "SsmlSegment",
    "guess_language",
    "normalize",
    "parse_ssml",
    "resolve_language",
    "split_sentences",
    "ssml_parts",
]

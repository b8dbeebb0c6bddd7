"""Sentence splitting for one-shot and streamed text.

Qwen3-TTS is synthesized one sentence at a time so the first sentence can be
heard while the later ones are still being generated. Boundaries come from
the sentence-stream package (the one wyoming-piper uses): it handles
abbreviations such as "Dr. Smith", Chinese/Japanese 。！？ and blank lines,
and it takes streamed text in pieces that need not end on a sentence.
"""

from __future__ import annotations

from collections.abc import Iterable

from sentence_stream import SentenceBoundaryDetector


class SentenceBuffer:
    """Collects streamed text and hands back each sentence once it is complete.

    A sentence counts as complete when the text that follows shows it ended
    (the next sentence has begun), so the last one only comes out of flush().
    """

    def __init__(self) -> None:
        self._detector = SentenceBoundaryDetector()

    def feed(self, text: str) -> list[str]:
        """Add a piece of text; return the sentences it completed, in order."""
        return _clean(self._detector.add_chunk(text))

    def flush(self) -> list[str]:
        """End the text; return what is left (zero or one sentence) and start afresh."""
        return _clean([self._detector.finish()])


def split_sentences(text: str) -> list[str]:
    """Split a whole text into its sentences, stripped, without empty ones."""
    buffer = SentenceBuffer()
    return buffer.feed(text) + buffer.flush()


def _clean(sentences: Iterable[str]) -> list[str]:
    return [stripped for sentence in sentences if (stripped := sentence.strip())]

"""Sentence splitting for one-shot and streamed text.

Qwen3-TTS is synthesized one sentence at a time so the first sentence can be
heard while the later ones are still being generated. Boundaries come from
the sentence-stream package (the one wyoming-piper uses): it handles
abbreviations such as "Dr. Smith", Chinese/Japanese 。！？ and blank lines,
and it takes streamed text in pieces that need not end on a sentence.

sentence-stream ends a sentence after a number or a lowercase letter with a period before a
capital, which cuts "Am 3. Mai", "z. B. gut" and "1. First item". A small step after it
puts such pieces back: a sentence ending in "3." or "z." waits for the next one and is
joined to it; a list number alone on its line ("...\n2.") moves to the item it numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sentence_stream import SentenceBoundaryDetector


class SentenceBuffer:
    """Collects streamed text and hands back each sentence once it is complete.

    A sentence counts as complete when the text that follows shows it ended
    (the next sentence has begun), so the last one only comes out of flush().
    """

    def __init__(self) -> None:
        self._detector = SentenceBoundaryDetector()
        self._carry = ""  # an unfinished end ("Am 3.") waiting for the sentence it belongs to

    def feed(self, text: str) -> list[str]:
        """Add a piece of text; return the sentences it completed, in order."""
        return self._rejoin(_clean(self._detector.add_chunk(text)))

    def flush(self) -> list[str]:
        """End the text; return what is left (zero or one sentence) and start afresh."""
        sentences = self._rejoin(_clean([self._detector.finish()]))
        if self._carry:
            sentences.append(self._carry)
            self._carry = ""
        return sentences

    def _rejoin(self, sentences: list[str]) -> list[str]:
        """Join sentences that sentence-stream cut after "3." or "z." to the one that follows."""
        complete = []
        for sentence in sentences:
            if self._carry:
                sentence = f"{self._carry} {sentence}"
                self._carry = ""
            unfinished = _UNFINISHED_END.search(sentence)
            if unfinished is None:
                complete.append(sentence)
                continue
            head = sentence[: unfinished.start()]
            if head.strip() and head.rstrip(" \t").endswith("\n"):
                complete.append(head.strip())  # a list number on its own line starts the next sentence
                self._carry = unfinished.group(0)
            else:
                self._carry = sentence
        return complete


def split_sentences(text: str) -> list[str]:
    """Split a whole text into its sentences, stripped, without empty ones."""
    buffer = SentenceBuffer()
    return buffer.feed(text) + buffer.flush()


# A sentence that ends in a short number or a lowercase letter and a period: "Am 3.", "z.", "\n2.".
_UNFINISHED_END = re.compile(r"(?:^|(?<=\s))(?:\d{1,3}|[a-zа-яё])\.$")


def _clean(sentences: Iterable[str]) -> list[str]:
    return [stripped for sentence in sentences if (stripped := sentence.strip())]

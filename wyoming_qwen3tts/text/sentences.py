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

A "sentence" with no end in sight (a list without full stops, text from a tool that never
punctuates) is cut at clauses, then words, into pieces of at most MAX_SENTENCE_CHARS: each
piece must fit the talker's position table and frame cap, and a shorter piece is heard sooner.
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
        return _limited(self._rejoin(_clean(self._detector.add_chunk(text))))

    def flush(self) -> list[str]:
        """End the text; return what is left and start afresh."""
        sentences = self._rejoin(_clean([self._detector.finish()]))
        if self._carry:
            sentences.append(self._carry)
            self._carry = ""
        return _limited(sentences)

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


MAX_SENTENCE_CHARS = 300

# Where a long sentence may be cut: after clause punctuation, else at any run of spaces.
_CLAUSE_BREAK = re.compile(r"(?<=[,;:，、；：])\s*|\s+(?=[—–]\s)")
_WORD_BREAK = re.compile(r"\s+")


def split_long(sentence: str, limit: int = MAX_SENTENCE_CHARS) -> list[str]:
    """A sentence cut into pieces of at most limit characters: at clauses, else words, else anywhere."""
    if len(sentence) <= limit:
        return [sentence]
    return _pack(sentence, limit, (_CLAUSE_BREAK, _WORD_BREAK))


def _pack(text: str, limit: int, breaks: tuple[re.Pattern[str], ...]) -> list[str]:
    """Greedily join the units between breaks[0] into pieces up to limit; split longer units by the rest."""
    if len(text) <= limit:
        return [text]
    if not breaks:  # no break at all (e.g. unpunctuated Chinese): cut by length
        return [text[i : i + limit] for i in range(0, len(text), limit)]
    pieces: list[str] = []
    current = ""
    for unit in (u for u in breaks[0].split(text) if u):
        candidate = f"{current} {unit}" if current else unit
        if len(candidate) <= limit:
            current = candidate
            continue
        if current:
            pieces.append(current)
        if len(unit) <= limit:
            current = unit
        else:
            *whole, current = _pack(unit, limit, breaks[1:])
            pieces.extend(whole)
    if current:
        pieces.append(current)
    return pieces


def _limited(sentences: list[str]) -> list[str]:
    return [piece for sentence in sentences for piece in split_long(sentence)]


# A sentence that ends in a short number or a lowercase letter and a period: "Am 3.", "z.", "\n2.".
_UNFINISHED_END = re.compile(r"(?:^|(?<=\s))(?:\d{1,3}|[a-zа-яё])\.$")


def _clean(sentences: Iterable[str]) -> list[str]:
    return [stripped for sentence in sentences if (stripped := sentence.strip())]

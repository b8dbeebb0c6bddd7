"""The talker's keys and values for the beginnings of prompts that do not depend on the text.

Every prompt of one voice starts alike: the chat role, the think tags with the language, the speaker
(or a clone's x-vector and reference transcript, or a design's instruction). A prompt is a prefill bound
by arithmetic (the 0.6B talker: a 35-token sentence prompt 90-105 ms, the same without its 9 voice
positions 60-80 ms, docs/speed.md "Voice prefixes"), so the keys and values of that beginning are kept
and copied into the next prompt's cache instead of being computed again: first audio comes sooner, and
several requests sent at once prefill less. A prefix is found by the bytes of its embeddings, all of
them, so a hit is exact: causal attention makes a position's keys and values a function of the
positions up to it alone. The store holds at most `budget` bytes; the least recently used prefix goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

# Shorter shared beginnings are not worth the look-up; real ones have 7 positions or more (role, think
# tags, pad; a speaker, a language, a clone's transcript or a design's instruction add to them).
MIN_PREFIX = 4
# Of keys and values kept: about 229 KB a position for the 0.6B and 1.7B talkers in float32 (28 layers,
# 8 key/value heads of 128), so ~140 positions: a few voices' prefixes, or one long clone transcript.
PREFIX_BUDGET_BYTES = 32 << 20


@dataclass
class Prefix:
    """One prompt beginning's keys and values, [1, kv, n, D] a layer, and the bytes kept for it."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    nbytes: int


class PrefixStore:
    """Prompt beginnings by their embeddings, least recently used dropped first beyond `budget` bytes."""

    def __init__(self, budget: int = PREFIX_BUDGET_BYTES) -> None:
        self.budget = budget
        self._kept: OrderedDict[bytes, Prefix] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._kept)

    def find(self, embeds: torch.Tensor) -> Prefix | None:
        """The kept prefix whose embeddings equal embeds [1, n, H], if any."""
        key = _key(embeds)
        prefix = self._kept.get(key)
        if prefix is None:
            self.misses += 1
            return None
        self._kept.move_to_end(key)
        self.hits += 1
        return prefix

    def keep(self, embeds: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep the prefix of embeds [1, n, H]: copies of its keys and values (views into a cache)."""
        key = _key(embeds)
        tensors = [*keys, *values]
        nbytes = len(key) + sum(tensor.numel() * tensor.element_size() for tensor in tensors)
        if nbytes > self.budget:
            return
        prefix = Prefix([tensor.clone() for tensor in keys], [tensor.clone() for tensor in values], nbytes)
        old = self._kept.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._kept[key] = prefix
        self._bytes += prefix.nbytes
        while self._bytes > self.budget:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= dropped.nbytes


def _key(embeds: torch.Tensor) -> bytes:
    """The embeddings' shape, dtype and every byte: equal keys are equal embeddings."""
    flat = embeds.detach().contiguous().view(torch.uint8).reshape(-1)
    return f"{tuple(embeds.shape)}{embeds.dtype}".encode() + bytes(flat.numpy().data)

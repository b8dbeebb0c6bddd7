"""The codec on a thread of its own, beside the steps.

A talker or code-predictor step waits for memory; the codec's convolutions wait for arithmetic. On two
cores the steps on one thread and the codec on the other get more done than both taking turns on two
(docs/speed.md, "The codec beside the steps"). So the chunks due at a frame are decoded while the next
frames' steps run, and their audio is handed out when the steps next find the job done. The steps take
every thread while the codec has nothing to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

import torch

from .codec import StreamingDecoder, decode_together

K = TypeVar("K")


class CodecThread(Generic[K]):
    """One decoding job at a time on a thread with `threads` torch threads; `threads + step_threads` is
    what the process was given, and the caller's steps take `step_threads` while a job runs."""

    def __init__(self, threads: int, step_threads: int) -> None:
        self.threads = threads
        self.step_threads = step_threads
        self._pool = ThreadPoolExecutor(
            1, thread_name_prefix="qwen3tts-codec", initializer=torch.set_num_threads, initargs=(threads,)
        )
        self._job: tuple[list[K], Future[list[torch.Tensor]]] | None = None

    @property
    def busy(self) -> bool:
        """Whether a job is still decoding."""
        return self._job is not None and not self._job[1].done()

    @property
    def pending(self) -> bool:
        """Whether a job was submitted and not yet collected."""
        return self._job is not None

    def submit(
        self, keys: Sequence[K], decoders: Sequence[StreamingDecoder], chunks: Sequence[torch.Tensor]
    ) -> None:
        """Decode each chunk [T, 16] with its decoder (decode_together), the job before collected first.
        A decoder must not be used elsewhere until its job was collected: the thread advances its state."""
        assert self._job is None, "collect() the job before submitting another"
        self._job = (list(keys), self._pool.submit(decode_together, list(decoders), list(chunks)))

    def collect(self) -> list[tuple[K, torch.Tensor]]:
        """The submitted job's samples by key, once it is done (waits); [] if there was none. A job that
        failed raises its error here."""
        if self._job is None:
            return []
        keys, future = self._job
        self._job = None
        return list(zip(keys, future.result(), strict=True))

    def close(self) -> None:
        """Let the thread go once its job is done."""
        self._pool.shutdown(wait=True)

"""The one worker thread that runs every engine call, one at a time, off the event loop: blocking calls
gain nothing side by side on a few cores, and a job per generator step lets requests interleave by chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_EXHAUSTED = object()


class InferenceWorker:
    """Runs blocking engine work on one shared worker thread, first come first served.

    initializer runs once on the worker thread before its first job (for
    thread-local settings such as torch's grad mode).
    """

    def __init__(
        self,
        initializer: Callable[[], Any] | None = None,
        thread_name: str = "qwen3tts-inference",
    ) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=thread_name, initializer=initializer
        )
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once close() or aclose() was called."""
        return self._closed

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run func(*args) on the worker thread and return its result.

        Raises RuntimeError once closed. Cancelling the caller does not
        interrupt a job that already started; it finishes on its own.
        """
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def iterate(self, func: Callable[..., Iterator[T]], *args: Any) -> AsyncGenerator[T, None]:
        """Call func(*args) on the worker thread and yield its items, each next() one job.

        The next step is queued before an item is handed out, so the worker
        computes it while the event loop sends this one instead of waiting
        for the consumer to ask (a queued step still waits its turn behind
        other connections' steps). Use it inside contextlib.aclosing(): when
        the consumer stops early or is cancelled, the generator is closed on
        the worker thread, after any step of it still queued or running there.
        """
        # Made and first stepped in one job: a new sentence waits for one turn, not two.
        items, first = await self.run(_start, func, args)
        step: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        step.set_result(first)
        try:
            while (item := await step) is not _EXHAUSTED:
                step = asyncio.ensure_future(self.run(next, items, _EXHAUSTED))
                yield item
        finally:
            # A step computed ahead for a consumer that left is dropped, its error included.
            step.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._close_later(items)

    def close(self, wait: bool = True) -> None:
        """Refuse new jobs, drop queued ones and (if wait) block until the running one ends."""
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)

    async def aclose(self) -> None:
        """close(wait=True) without blocking the event loop."""
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def _close_later(self, items: Iterator[Any]) -> None:
        # A generator cannot be closed while a step of it runs on the worker,
        # so its close() is queued behind that step.
        close = getattr(items, "close", None)
        if close is None:
            return
        try:
            self._executor.submit(close)
        except RuntimeError:  # closed: the generator is simply dropped
            pass


def _start(func: Callable[..., Iterator[T]], args: tuple[Any, ...]) -> tuple[Iterator[T], Any]:
    items = func(*args)
    return items, next(items, _EXHAUSTED)

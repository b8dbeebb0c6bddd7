"""The one worker thread that runs every engine call, one at a time, off the event loop: blocking calls
gain nothing side by side on a few cores. Sentences in flight advance together, one batched frame a job
(continuous batching: one read of the weights speaks for all of them), or with --max-batch 1 one chunk
of one sentence a job, interleaved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .memory import release_free_memory

if TYPE_CHECKING:
    from .engine.seams import Engine, EngineStream
    from .voices.voice import Voice

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

_EXHAUSTED = object()

# Idle this long, the worker gives the memory freed by its jobs back to the system (memory.py): long
# enough that the frames of a sentence and the sentences of one answer never wait for it.
IDLE_RELEASE_SECONDS = 2.0

# An idle batch waits this long after the first new sentence before it starts, so that requests sent
# together (an announcement to several satellites, a benchmark's clients) run their prompts in one talker
# step and hear their first audio together, not one prompt and one frame apart (docs/speed.md).
GATHER_SECONDS = 0.02

# A Qwen3-TTS-12Hz frame: 12.5 a second. A batched step slower than this falls behind its listeners.
FRAME_SECONDS = 0.08
# Steps with only sentences somebody hears, timed to tell whether this CPU keeps up with them (the last
# this many; from PACE_SAMPLES_NEEDED on, the timing decides).
PACE_WINDOW = 25
PACE_SAMPLES_NEEDED = 3
# A request's sentence generated ahead shares the steps of the one being made (and slows it) only while
# the listener has this much audio in hand: where steps keep up with real time, enough that a chunk made
# at the shared pace still comes in time; where they fall behind, a little (docs/speed.md, "Pacing").
AHEAD_BUFFER_SECONDS = 1.0
AHEAD_BUFFER_BEHIND_SECONDS = 0.3


class Listener(Protocol):
    """Whom a request's sentences are for (the service's Utterance): how much audio it has in hand."""

    def buffered_seconds(self) -> float: ...


class InferenceWorker:
    """Runs blocking engine work on one shared worker thread, first come first served.

    initializer runs once on the worker thread before its first job (for
    thread-local settings such as torch's grad mode). Once no job has run for release_after seconds,
    release runs once on the worker thread (by default: freed memory back to the system).
    """

    def __init__(
        self,
        initializer: Callable[[], Any] | None = None,
        thread_name: str = "qwen3tts-inference",
        max_batch: int = 1,
        release_after: float | None = IDLE_RELEASE_SECONDS,
        release: Callable[[], Any] = release_free_memory,
    ) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=thread_name, initializer=initializer
        )
        self._closed = False
        self.max_batch = max_batch  # sentences that advance together; 1: interleaved chunk by chunk
        self._batch: SentenceBatch | None = None
        self._release_after = release_after
        self._release = release
        self._jobs = 0  # run() calls not yet returned
        self._worked = False  # a job ran since the last release
        self._idle_timer: asyncio.TimerHandle | None = None

    def speak(
        self,
        engine: Engine,
        text: str,
        voice: Voice,
        language: str,
        ahead: bool = False,
        owner: Listener | None = None,
    ) -> SentenceAudio:
        """A sentence for the batch (max_batch > 1): generation starts at once, its PCM arrives in order.

        Iterate the result for the PCM; call its cancel() when leaving early, which frees its place in
        the batch at the next frame. ahead: nobody listens to it yet (see EngineStream.urgent) until
        its listen() is called. owner: the request it belongs to (see SentenceBatch on pacing).
        """
        if self._batch is None or self._batch.engine is not engine:
            self._batch = SentenceBatch(self, engine)
        return self._batch.add(text, voice, language, ahead, owner)

    @property
    def closed(self) -> bool:
        """True once close() or aclose() was called."""
        return self._closed

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run func(*args) on the worker thread and return its result.

        Raises RuntimeError once closed. Cancelling the caller does not
        interrupt a job that already started; it finishes on its own.
        """
        loop = asyncio.get_running_loop()
        self._jobs += 1
        self._cancel_idle_timer()
        try:
            return await loop.run_in_executor(self._executor, func, *args)
        finally:
            self._jobs -= 1
            self._worked = True
            if not self._jobs and self._release_after is not None and not self._closed:
                self._idle_timer = loop.call_later(self._release_after, self._release_when_idle)

    def _release_when_idle(self) -> None:
        """Queue the release behind whatever the worker still runs (a job whose caller was cancelled)."""
        self._idle_timer = None
        if self._jobs or self._closed or not self._worked:
            return
        self._worked = False
        try:
            self._executor.submit(self._release)
        except RuntimeError:  # closed meanwhile
            pass

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
        self._cancel_idle_timer()
        self._executor.shutdown(wait=wait, cancel_futures=True)

    async def aclose(self) -> None:
        """close(wait=True) without blocking the event loop."""
        self._closed = True
        self._cancel_idle_timer()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

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


class SentenceAudio:
    """One sentence in the batch: its PCM, in order, as the batch makes it (async-iterable)."""

    def __init__(
        self,
        text: str,
        voice: Voice,
        language: str,
        ahead: bool,
        wake: Callable[[], None],
        owner: Listener | None = None,
    ) -> None:
        self.args = (text, voice, language)
        self.owner = owner  # the request it belongs to; None: a request of its own
        self.stream: EngineStream | None = None  # the engine's, touched on the worker thread only
        self.cancelled = False
        self.ahead = ahead  # generated ahead of the sentence being listened to
        self._wake = wake  # tells a batch that waits for its held sentences that one changed
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()

    def cancel(self) -> None:
        """The listener left: the batch drops this sentence at its next frame."""
        self.cancelled = True
        self._wake()

    def listen(self) -> None:
        """Its turn to be heard: from the next frame on its audio comes as fast as it can."""
        self.ahead = False
        self._wake()

    def deliver(self, item: bytes | BaseException | None) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> SentenceAudio:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # stays ended
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(None)
            raise item
        return item


class SentenceBatch:
    """The sentences in flight on one engine, advanced together one frame a job on the worker thread.

    A waiting sentence joins at a frame boundary: its prompt runs as a step of its own, then it
    advances with the rest. Sentences somebody waits to hear (new requests) all join at the same
    boundary, so the last of several sent at once hears its first audio after one batched frame, not
    one frame per request before it; a sentence generated ahead joins alone, one a frame, as nobody
    waits for it. A sentence that ends or is cancelled leaves at once; one generated ahead and all
    made waits outside the count of --max-batch until it is heard.

    Pacing: a sentence generated ahead slows, by sharing its steps, the sentence of its request that is
    being made, and a listener that runs dry hears a gap. So of a request's sentences still to be made,
    the first (the one heard, or next to be heard) always steps; the second steps along only while
    the listener has audio in hand (Listener.buffered_seconds: AHEAD_BUFFER_SECONDS where the steps of
    heard sentences, timed over the last frames, keep up with real time, AHEAD_BUFFER_BEHIND_SECONDS
    where they fall behind and the listener waits anyway); the others wait, without steps or a prompt.
    """

    def __init__(self, worker: InferenceWorker, engine: Engine) -> None:
        self.worker = worker
        self.engine = engine
        self.waiting: deque[SentenceAudio] = deque()
        self.active: list[SentenceAudio] = []  # worker thread only
        self._running: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # a sentence was added, cancelled or is now listened to
        self._heard_steps: deque[float] = deque(maxlen=PACE_WINDOW)  # seconds a step, heard rows only

    def add(
        self, text: str, voice: Voice, language: str, ahead: bool = False, owner: Listener | None = None
    ) -> SentenceAudio:
        audio = SentenceAudio(text, voice, language, ahead, self._changed.set, owner)
        self.waiting.append(audio)
        self._changed.set()
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._run(), name="qwen3tts batch")
        return audio

    async def _run(self) -> None:
        await asyncio.sleep(GATHER_SECONDS)  # started idle: let the sentences sent with this one arrive
        while self.waiting or self.active:
            self._changed.clear()  # set from here on by what happens while the job runs
            try:
                delivered = await self.worker.run(self._frames)
            except Exception as err:  # the worker is closed: every sentence ends with the error
                for audio in [*self.active, *self.waiting]:
                    audio.deliver(err)
                self.active, self.waiting = [], deque()
                return
            for audio, item in delivered:
                audio.deliver(item)
            if self._stuck():
                # Only sentences generated ahead, all made, wait for their turn (and no new one can
                # join): nothing to compute until one is listened to or cancelled.
                await self._changed.wait()

    def _stuck(self) -> bool:
        return bool(self.active) and self._all_held() and not self._can_join()

    def _can_join(self) -> bool:
        # A copy: the event loop may add to the queue while this runs on the worker thread.
        return self._stepping() < self.worker.max_batch and any(map(self._may_step, list(self.waiting)))

    def _stepping(self) -> int:
        """Sentences that still take a row of the batched steps. A held one (generated ahead, all made,
        waiting for its turn) takes none: it leaves its place to others, so a client slow to hear its
        audio never keeps anyone else out of the batch."""
        return sum(not self._held(audio) for audio in self.active)

    def _all_held(self) -> bool:
        return all(self._held(audio) for audio in self.active)

    @staticmethod
    def _held(audio: SentenceAudio) -> bool:
        return audio.ahead and audio.stream is not None and audio.stream.held and not audio.cancelled

    def _frames(self) -> list[tuple[SentenceAudio, bytes | BaseException | None]]:
        """On the worker thread: frames until one has something to hand out or a sentence waits to join
        (one job per chunk, not per frame: fewer trips between the threads, as before batching)."""
        while True:
            delivered = self._frame()
            if delivered or self._can_join() or self._all_held():
                return delivered  # _all_held() of no sentences: none left

    def _frame(self) -> list[tuple[SentenceAudio, bytes | BaseException | None]]:
        """On the worker thread: join one waiting sentence, advance all, hand out what is ready."""
        delivered: list[tuple[SentenceAudio, bytes | BaseException | None]] = []
        kept = [audio for audio in self.active if not audio.cancelled]
        if len(kept) < len(self.active):
            _LOGGER.debug(
                "%d cancelled sentences left the batch (%d in flight)",
                len(self.active) - len(kept),
                len(kept),
            )
        self.active = kept
        joining: list[SentenceAudio] = []
        room = self.worker.max_batch - self._stepping()
        for audio in list(self.waiting):  # added to on the event loop meanwhile: taken one by one
            if len(joining) >= room:
                break
            if audio.cancelled:
                self.waiting.remove(audio)
            elif not audio.ahead or (not joining and self._may_step(audio)):
                # Nobody hears a sentence made ahead yet: one such prompt a frame, alone, holds the
                # others back the least; one its listener cannot afford yet waits, without its prompt.
                self.waiting.remove(audio)
                joining.append(audio)
                if audio.ahead:
                    break
        started = self.engine.start_many([audio.args for audio in joining]) if joining else []
        for audio, stream in zip(joining, started, strict=True):
            if isinstance(stream, Exception):  # this sentence cannot be spoken; the others go on
                delivered.append((audio, stream))
                continue
            audio.stream = stream
            self.active.append(audio)
            _LOGGER.debug("A sentence joined the batch (%d in flight)", len(self.active))
        if not self.active:
            return delivered
        for audio in self.active:
            assert audio.stream is not None
            audio.stream.urgent = not audio.ahead
        stepping = self._paced()
        # Timed when only sentences somebody hears compute (held ones compute nothing).
        heard_only = bool(stepping) and not any(audio.ahead and not self._held(audio) for audio in stepping)
        step_began = time.monotonic()
        try:
            chunks = self.engine.advance([audio.stream for audio in stepping])  # type: ignore[misc]
        except Exception as err:
            _LOGGER.exception("A batched step failed; ending its %d sentences", len(self.active))
            delivered.extend((audio, err) for audio in self.active)
            self.active = []
            return delivered
        if heard_only:
            self._heard_steps.append(time.monotonic() - step_began)
        made = {id(audio): pcm for audio, pcm in zip(stepping, chunks, strict=True)}
        still = []
        for audio in self.active:
            pcm = made.get(id(audio), b"")  # nothing from a sentence paused this frame
            if pcm:
                delivered.append((audio, pcm))
            if audio.stream is not None and audio.stream.done:
                delivered.append((audio, None))
            else:
                still.append(audio)
        if len(still) < len(self.active):
            _LOGGER.debug("%d sentences ended (%d in flight)", len(self.active) - len(still), len(still))
        self.active = still
        return delivered

    def _paced(self) -> list[SentenceAudio]:
        """The sentences that step this frame: all but those generated ahead that their listener cannot
        afford yet (see the class docstring)."""
        return [audio for audio in self.active if self._may_step(audio)]

    def _may_step(self, audio: SentenceAudio) -> bool:
        """Whether a sentence (active, or waiting to join) may step this frame, by its request's pacing."""
        if not audio.ahead or audio.owner is None or self._held(audio):
            return True
        before = 0  # sentences of its request, before it, still to be made
        for other in self.active:
            if other is audio:
                break
            if other.owner is audio.owner and not self._held(other) and not other.cancelled:
                before += 1
        if before == 0:
            return True
        if before > 1:
            return False
        limit = AHEAD_BUFFER_SECONDS if self._keeps_up() else AHEAD_BUFFER_BEHIND_SECONDS
        return audio.owner.buffered_seconds() >= limit

    def _keeps_up(self) -> bool:
        """Whether the recent steps of heard sentences alone ran faster than the audio they make (until
        enough are timed: assumed so, which keeps a first answer's first sentence at full speed)."""
        timed = self._heard_steps
        return len(timed) < PACE_SAMPLES_NEEDED or sum(timed) / len(timed) < FRAME_SECONDS


def _start(func: Callable[..., Iterator[T]], args: tuple[Any, ...]) -> tuple[Iterator[T], Any]:
    items = func(*args)
    return items, next(items, _EXHAUSTED)

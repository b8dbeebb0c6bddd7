"""The one inference worker thread: every job on it, in order, and engine generators stepped one job
at a time (closed on the worker, computed one step ahead)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing

import pytest

from wyoming_qwen3tts import worker as worker_module
from wyoming_qwen3tts.engine.seams import Engine, EngineStream
from wyoming_qwen3tts.voices.voice import Voice
from wyoming_qwen3tts.worker import InferenceWorker

READ_TIMEOUT = 5.0


async def test_inference_worker_runs_every_job_on_one_thread() -> None:
    worker = InferenceWorker()
    try:
        names = await asyncio.gather(*(worker.run(lambda: threading.current_thread().name) for _ in range(5)))
        assert len(set(names)) == 1
        assert names[0] != threading.current_thread().name
    finally:
        await worker.aclose()


async def test_inference_worker_closes_an_abandoned_generator_on_its_thread() -> None:
    closed_on: list[str] = []

    def numbers() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed_on.append(threading.current_thread().name)

    worker = InferenceWorker()
    try:
        worker_thread = await worker.run(lambda: threading.current_thread().name)
        async with aclosing(worker.iterate(numbers)) as items:
            async for item in items:
                if item == 2:
                    break
        await worker.run(lambda: None)  # the close was queued before this job
        assert closed_on == [worker_thread]
    finally:
        await worker.aclose()


async def test_inference_worker_refuses_work_once_closed() -> None:
    worker = InferenceWorker()
    await worker.aclose()
    assert worker.closed
    with pytest.raises(RuntimeError):
        await worker.run(lambda: None)


async def test_inference_worker_computes_the_next_step_while_an_item_is_sent() -> None:
    second_step_ran = threading.Event()
    steps_run: list[int] = []

    def numbers() -> Iterator[int]:
        for number in range(3):
            steps_run.append(number)
            if number == 1:
                second_step_ran.set()
            yield number

    worker = InferenceWorker()
    try:
        async with aclosing(worker.iterate(numbers)) as items:
            assert await anext(items) == 0
            # The consumer still holds item 0 (as when it writes audio): the worker is not idle meanwhile.
            assert await asyncio.to_thread(second_step_ran.wait, READ_TIMEOUT)
            assert [item async for item in items] == [1, 2]
        assert steps_run == [0, 1, 2]
    finally:
        await worker.aclose()


async def test_inference_worker_drops_the_error_of_a_step_computed_for_a_consumer_that_left() -> None:
    def failing() -> Iterator[int]:
        yield 0
        raise RuntimeError("step computed ahead fails")

    worker = InferenceWorker()
    try:
        async with aclosing(worker.iterate(failing)) as items:
            assert await anext(items) == 0
        assert await worker.run(lambda: "still serving") == "still serving"
    finally:
        await worker.aclose()


async def test_a_new_sentence_waits_for_one_step_of_another_connection_not_two() -> None:
    log: list[str] = []

    def steps(name: str, count: int, seconds: float) -> Iterator[str]:
        for number in range(count):
            time.sleep(seconds)
            log.append(f"{name}{number}")
            yield f"{name}{number}"

    async def speak_all(name: str, count: int, seconds: float) -> None:
        async with aclosing(worker.iterate(steps, name, count, seconds)) as items:
            async for _ in items:
                pass

    worker = InferenceWorker()
    try:
        long_one = asyncio.ensure_future(speak_all("a", 30, 0.02))  # another connection, in full flow
        await asyncio.sleep(0.1)
        asked_at = len(log)
        await speak_all("b", 1, 0.0)
        waited_for = [entry for entry in log[asked_at : log.index("b0")] if entry.startswith("a")]
        await long_one
        # The step that was running when it asked, and nothing more (two before: made, then stepped).
        assert len(waited_for) <= 1, log
    finally:
        await worker.aclose()


async def test_a_cancelled_request_computes_at_most_one_step_more() -> None:
    log: list[int] = []

    def steps() -> Iterator[int]:
        for number in range(100):
            time.sleep(0.01)
            log.append(number)
            yield number

    worker = InferenceWorker()
    try:
        async with aclosing(worker.iterate(steps)) as items:
            assert await anext(items) == 0
        await worker.run(lambda: None)  # everything queued before this has run
        assert log[0] == 0 and len(log) <= 2  # at most the step computed ahead after the consumer left
    finally:
        await worker.aclose()


class _CountedStream(EngineStream):
    """Three frames; audio handed out only while urgent (a stand-in for the pipeline's SentenceStream)."""

    def __init__(self) -> None:
        self.made = self.sent = 0

    @property
    def done(self) -> bool:
        return self.sent >= 3

    @property
    def held(self) -> bool:
        return self.made >= 3 and not self.urgent


class _CountingEngine:
    """Counts the batched steps it is asked for (a unit test of the batch's scheduling alone)."""

    def __init__(self) -> None:
        self.steps = 0

    def start(self, text, voice, language) -> _CountedStream:
        return _CountedStream()

    start_many = Engine.start_many  # each in turn, through start

    def advance(self, streams) -> list[bytes]:
        self.steps += 1
        out = []
        for stream in streams:
            stream.made = min(3, stream.made + 1)
            ready = stream.made - stream.sent if stream.urgent else 0
            stream.sent += ready
            out.append(b"\0\0" * ready)
        return out


async def test_a_sentence_generated_ahead_waits_without_steps_until_it_is_heard():
    engine = _CountingEngine()
    worker = InferenceWorker(max_batch=4)
    try:
        current = worker.speak(engine, "Now.", None, "english")  # type: ignore[arg-type]
        ahead = worker.speak(engine, "Later.", None, "english", ahead=True)  # type: ignore[arg-type]
        heard = b"".join([pcm async for pcm in current])
        await asyncio.sleep(0.3)  # the later sentence is all made, its audio held: no step should run
        steps_while_held = engine.steps
        await asyncio.sleep(0.3)
        assert engine.steps == steps_while_held
        ahead.listen()
        later = b"".join([pcm async for pcm in ahead])
    finally:
        await worker.aclose()
    assert len(heard) == len(later) == 6  # three frames each, none lost while held
    assert engine.steps <= 8


async def test_held_sentences_leave_their_places_to_others_and_nothing_spins():
    """A client slow to hear its audio must not keep anyone else out: sentences generated ahead and all
    made wait outside the count of --max-batch, and with nothing else to compute no step runs."""
    engine = _CountingEngine()
    worker = InferenceWorker(max_batch=2)
    try:
        first = worker.speak(engine, "One.", None, "english", ahead=True)  # type: ignore[arg-type]
        second = worker.speak(engine, "Two.", None, "english", ahead=True)  # type: ignore[arg-type]
        await asyncio.sleep(0.3)  # both all made and held
        third = worker.speak(engine, "Three.", None, "english")  # type: ignore[arg-type]

        async def hear() -> bytes:
            return b"".join([pcm async for pcm in third])

        heard = await asyncio.wait_for(hear(), 10)  # spoken while both places' sentences wait
        assert len(heard) == 6
        await asyncio.sleep(0.2)
        idle_at = engine.steps
        await asyncio.sleep(0.3)
        assert engine.steps == idle_at  # only held sentences left: nothing spins
        first.listen()
        assert len(b"".join([pcm async for pcm in first])) == 6  # nothing lost while held
        second.listen()
        assert len(b"".join([pcm async for pcm in second])) == 6
    finally:
        await worker.aclose()


async def test_a_full_batch_of_sentences_still_being_made_keeps_the_next_waiting():
    engine = _CountingEngine()
    widths: list[int] = []
    advance = engine.advance
    engine.advance = lambda streams: widths.append(len(streams)) or advance(streams)  # type: ignore[method-assign]
    worker = InferenceWorker(max_batch=1)
    try:
        first = worker.speak(engine, "One.", None, "english")  # type: ignore[arg-type]
        second = worker.speak(engine, "Two.", None, "english")  # type: ignore[arg-type]
        assert len(b"".join([pcm async for pcm in first])) == 6
        assert len(b"".join([pcm async for pcm in second])) == 6
    finally:
        await worker.aclose()
    assert widths and max(widths) == 1  # the second joined only once the first had left


class _ChunkEngine(Engine):
    """An engine that cannot batch: synthesize() only (the Engine seam's own start/advance serve it)."""

    model_kind = "custom_voice"

    def languages(self):
        return ["english"]

    def voices(self):
        return [Voice("ryan", "preset")]

    def synthesize(self, text, voice, language):
        yield from (text.encode() for _ in range(3))


async def test_an_engine_that_cannot_batch_is_stepped_chunk_by_chunk_in_the_batch():
    worker = InferenceWorker(max_batch=4)
    engine = _ChunkEngine()
    try:
        first = worker.speak(engine, "ab", engine.voices()[0], "english")
        second = worker.speak(engine, "cd", engine.voices()[0], "english")
        assert b"".join([pcm async for pcm in first]) == b"ababab"
        assert b"".join([pcm async for pcm in second]) == b"cdcdcd"
    finally:
        await worker.aclose()


def _logging_engine() -> tuple[_CountingEngine, list[str]]:
    """A counting engine that logs each sentence it starts and the rows of each step ("step N")."""
    engine = _CountingEngine()
    log: list[str] = []
    start, advance = engine.start, engine.advance
    engine.start = lambda text, voice, language: log.append(text) or start(text, voice, language)  # type: ignore[method-assign]
    engine.advance = lambda streams: log.append(f"step {len(streams)}") or advance(streams)  # type: ignore[method-assign]
    return engine, log


async def test_new_sentences_sent_together_join_at_one_frame_and_ones_made_ahead_one_a_frame():
    """The last of several requests sent at once hears its first audio after one batched frame, not one
    frame per request before it; sentences generated ahead (nobody waits for them) join one a frame."""
    engine, log = _logging_engine()
    worker = InferenceWorker(max_batch=4)
    try:
        heard = [worker.speak(engine, name, None, "english") for name in ("a", "b", "c")]  # type: ignore[arg-type]
        for audio in heard:
            assert len(b"".join([pcm async for pcm in audio])) == 6
        assert log[:4] == ["a", "b", "c", "step 3"]

        log.clear()
        ahead = [worker.speak(engine, name, None, "english", ahead=True) for name in ("d", "e")]  # type: ignore[arg-type]
        await asyncio.sleep(0.3)  # both made and held
        assert log[:4] == ["d", "step 1", "e", "step 2"]
        for audio in ahead:
            audio.listen()
            assert len(b"".join([pcm async for pcm in audio])) == 6
    finally:
        await worker.aclose()


async def test_requests_arriving_a_few_milliseconds_apart_at_an_idle_batch_share_one_prompt_step():
    """An idle batch waits GATHER_SECONDS before its first step, so requests sent together but arriving
    one after another (each connection parses its own events) still join at one frame."""
    engine, log = _logging_engine()
    worker = InferenceWorker(max_batch=4)
    try:
        heard = []
        for name in ("a", "b", "c"):
            heard.append(worker.speak(engine, name, None, "english"))  # type: ignore[arg-type]
            await asyncio.sleep(0.004)  # each connection parses its own events first
        for audio in heard:
            assert len(b"".join([pcm async for pcm in audio])) == 6
        assert log[:4] == ["a", "b", "c", "step 3"]  # not a step of "a" alone before the others joined
    finally:
        await worker.aclose()


class _TimedStream(EngineStream):
    """`frames` frames, handed out as made while urgent, held while not (as the pipeline's streams)."""

    def __init__(self, frames: int) -> None:
        self.frames, self.made, self.sent = frames, 0, 0

    @property
    def done(self) -> bool:
        return self.sent >= self.frames

    @property
    def held(self) -> bool:
        return self.made >= self.frames and not self.urgent


class _TimedEngine:
    """Steps that take `seconds` each; logs which sentences each step advanced, and each prompt."""

    def __init__(self, seconds: float, frames: int = 8) -> None:
        self.seconds, self.frames = seconds, frames
        self.steps: list[list[str]] = []
        self.started: list[str] = []

    def start(self, text, voice, language) -> _TimedStream:
        stream = _TimedStream(self.frames)
        stream.name = text  # type: ignore[attr-defined]
        self.started.append(text)
        return stream

    start_many = Engine.start_many

    def advance(self, streams) -> list[bytes]:
        time.sleep(self.seconds)
        self.steps.append([stream.name for stream in streams])
        out = []
        for stream in streams:
            stream.made = min(stream.frames, stream.made + 1)
            ready = stream.made - stream.sent if stream.urgent else 0
            stream.sent += ready
            out.append(b"\0\0" * ready)
        return out


class _Request:
    """A request as the service passes it (its Utterance): told apart by identity, not hashable, with
    as much audio in the listener's hands as the test says."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, buffered: float = 0.0) -> None:
        self.buffered = buffered

    def buffered_seconds(self) -> float:
        return self.buffered


async def _speak_one_answer(engine: _TimedEngine, request: _Request, later: int = 1) -> list[bytes]:
    """A request's sentence being heard and the next ones generated ahead, each heard in turn."""
    worker = InferenceWorker(max_batch=4)
    try:
        sentences = [worker.speak(engine, "now", None, "english", owner=request)]  # type: ignore[arg-type]
        for index in range(1, later + 1):
            name = f"later{index}" if later > 1 else "later"
            sentences.append(worker.speak(engine, name, None, "english", ahead=True, owner=request))  # type: ignore[arg-type]
        heard = []
        for audio in sentences:
            audio.listen()
            heard.append(b"".join([pcm async for pcm in audio]))
        return heard
    finally:
        await worker.aclose()


def _while_made(engine: _TimedEngine, name: str) -> list[list[str]]:
    """The steps up to the last one that advanced the sentence called name."""
    last = max(index for index, names in enumerate(engine.steps) if name in names)
    return engine.steps[: last + 1]


@pytest.mark.parametrize("step_seconds", [0.0, 0.08], ids=["steps keep up", "steps fall behind"])
async def test_a_sentence_made_ahead_waits_while_the_listener_has_no_audio_in_hand(monkeypatch, step_seconds):
    """Sharing the steps would slow the sentence being heard, and the listener would hear a gap: the next
    sentence of the request waits, without even its prompt, until that one is made."""
    monkeypatch.setattr(worker_module, "FRAME_SECONDS", 0.05)
    engine = _TimedEngine(seconds=step_seconds)
    heard = await _speak_one_answer(engine, _Request(buffered=0.0))
    assert [len(pcm) for pcm in heard] == [16, 16]  # every frame of both, in order
    assert _while_made(engine, "now") == [["now"]] * 8  # heard alone, at full speed
    assert engine.started == ["now", "later"]


@pytest.mark.parametrize(
    ("step_seconds", "buffered", "shares"),
    [(0.0, 0.5, False), (0.0, 1.5, True), (0.08, 0.5, True), (0.08, 0.2, False)],
    ids=["keep up, 0.5 s in hand", "keep up, 1.5 s", "fall behind, 0.5 s", "fall behind, 0.2 s"],
)
async def test_a_sentence_made_ahead_shares_the_steps_while_the_listener_has_enough_in_hand(
    monkeypatch, step_seconds, buffered, shares
):
    """Enough audio in hand that a chunk made at the shared pace still comes in time: more where the
    steps keep up with real time (AHEAD_BUFFER_SECONDS) than where they fall behind and the listener waits
    anyway (AHEAD_BUFFER_BEHIND_SECONDS), once enough steps are timed to tell which."""
    monkeypatch.setattr(worker_module, "FRAME_SECONDS", 0.05)
    engine = _TimedEngine(seconds=step_seconds)
    heard = await _speak_one_answer(engine, _Request(buffered=buffered))
    assert [len(pcm) for pcm in heard] == [16, 16]
    assert (["now", "later"] in engine.steps) == shares
    if shares and step_seconds:
        timed = worker_module.PACE_SAMPLES_NEEDED
        assert engine.steps[:timed] == [["now"]] * timed  # until timed, assumed to keep up


async def test_only_the_next_sentence_made_ahead_shares_the_steps_of_the_one_being_heard(monkeypatch):
    """Two sentences ahead, all the audio in the world in hand: one row ahead at a time, so the sentence
    being heard is slowed by one, not two; the third steps once the first is made."""
    monkeypatch.setattr(worker_module, "FRAME_SECONDS", 0.05)
    engine = _TimedEngine(seconds=0.0)
    heard = await _speak_one_answer(engine, _Request(buffered=60.0), later=2)
    assert [len(pcm) for pcm in heard] == [16, 16, 16]
    while_now = _while_made(engine, "now")
    assert ["now", "later1"] in while_now
    assert not any("later2" in names for names in while_now)
    assert engine.started.index("later2") > engine.started.index("later1")


async def test_a_sentence_ahead_waiting_for_its_turn_never_holds_back_another_request(monkeypatch):
    """A sentence made ahead that its listener cannot afford yet stays in the queue; a new request's
    sentence behind it joins at once."""
    monkeypatch.setattr(worker_module, "FRAME_SECONDS", 0.05)
    engine = _TimedEngine(seconds=0.01, frames=20)
    worker = InferenceWorker(max_batch=4)
    request = _Request(buffered=0.0)
    try:
        now = worker.speak(engine, "now", None, "english", owner=request)  # type: ignore[arg-type]
        later = worker.speak(engine, "later", None, "english", ahead=True, owner=request)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        other = worker.speak(engine, "other", None, "english", owner=_Request())  # type: ignore[arg-type]
        assert len(b"".join([pcm async for pcm in other])) == 40
        assert len(b"".join([pcm async for pcm in now])) == 40
        later.listen()
        assert len(b"".join([pcm async for pcm in later])) == 40
    finally:
        await worker.aclose()
    assert engine.started == ["now", "other", "later"]  # "other" went past the one waiting for its turn
    assert not any("now" in names and "later" in names for names in engine.steps)


async def test_sentences_of_other_requests_are_never_paused_for_each_other(monkeypatch):
    monkeypatch.setattr(worker_module, "FRAME_SECONDS", 0.05)
    engine = _TimedEngine(seconds=0.0)
    worker = InferenceWorker(max_batch=4)
    try:
        one = worker.speak(engine, "one", None, "english", owner=_Request())  # type: ignore[arg-type]
        other = worker.speak(engine, "other", None, "english", ahead=True, owner=_Request())  # type: ignore[arg-type]
        assert len(b"".join([pcm async for pcm in one])) == 16
        other.listen()
        assert len(b"".join([pcm async for pcm in other])) == 16
    finally:
        await worker.aclose()
    assert ["one", "other"] in engine.steps


async def test_the_worker_releases_memory_once_on_its_thread_after_it_has_been_idle() -> None:
    released: list[str] = []
    worker = InferenceWorker(
        release_after=0.2, release=lambda: released.append(threading.current_thread().name)
    )
    try:
        worker_thread = await worker.run(lambda: threading.current_thread().name)
        for _ in range(6):  # busy: jobs closer together than release_after
            await worker.run(time.sleep, 0.05)
            await asyncio.sleep(0.05)
        assert released == []
        await asyncio.sleep(0.5)
        assert released == [worker_thread]
        await asyncio.sleep(0.5)
        assert released == [worker_thread]  # once per idle spell, not every release_after
        await worker.run(lambda: None)
        await asyncio.sleep(0.5)
        assert released == [worker_thread, worker_thread]
    finally:
        await worker.aclose()


async def test_the_worker_never_releases_memory_while_a_long_job_runs() -> None:
    released: list[float] = []
    worker = InferenceWorker(release_after=0.1, release=lambda: released.append(time.monotonic()))
    try:
        await worker.run(time.sleep, 0.4)
        ended = time.monotonic()
        await asyncio.sleep(0.4)
        assert len(released) == 1 and released[0] >= ended
    finally:
        await worker.aclose()

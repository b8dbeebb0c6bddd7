"""Fuzzing the Wyoming event stream of the real server (issue 10).

Whatever one connection sends (garbage, headers with wrong types or huge declared lengths, data that is
not an object, fields of the wrong type, unknown events, streaming events out of order, a socket closed
mid-event or reset mid-audio), the server answers it, sends one error event or closes it, and keeps
serving: after every example a "witness" connection asks for a fixed sentence and must get the
audio it got at the start (greedy decoding: audio is a function of text and voice), and good streams
running beside a misbehaving connection must each get exactly their solo audio.

One server serves the module: `python -m wyoming_qwen3tts` with the tiny custom-voice model, sentences
cut at 4 frames, `--idle-timeout 2` so that readers stuck on a silent client are closed quickly, no
bound on connections (a leaked connection fails its own example, not every later one while shrinking),
and a 1 s shutdown grace (a leaked connection counts as busy and would hold the exit for 30 s).

By default the example counts are bounded and the examples fixed (derandomized), so CI is repeatable
and the file takes about a minute here. FUZZ_EXAMPLES=N runs N random examples (N/6 for the
interleaving test) instead, about 0.3 s each:

    FUZZ_EXAMPLES=1000 script/test tests/test_fuzz_events.py -q                           # ~7 minutes
    FUZZ_EXAMPLES=1000 script/test tests/test_fuzz_events.py -q --hypothesis-seed=7       # reproducible
    FUZZ_EXAMPLES=1000 script/test tests/test_fuzz_events.py -q --hypothesis-show-statistics  # outcomes
    FUZZ_EXAMPLES=1000 SHOW_SERVER_LOG=1 script/test tests/test_fuzz_events.py -q -s      # with the log

A failing example is printed shrunk, with a @reproduce_failure blob to replay it.

The tests after the fuzz tests are the server misbehaviours this suite found, each fixed (see wire.py and
the handler's disconnect): a connection leak, a silent open stream, huge declared lengths, an event split
across the idle timeout, lone surrogates.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import numpy as np
import pytest
from conftest import running_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server import same_audio

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
IDLE_TIMEOUT = 2.0
SERVER_ARGS = ["--greedy", "--no-warmup", "--threads", "1", "--max-frames", "4"]
SERVER_ARGS += ["--idle-timeout", str(IDLE_TIMEOUT), "--max-connections", "0", "--shutdown-grace", "1"]
DEADLINE = 30.0  # seconds a connection may take to be answered and closed, work included
HOST = "127.0.0.1"
RATE, WIDTH, CHANNELS = 24000, 2, 1
WITNESS_TEXT = "The witness speaks after every example."

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis directory in the repository; failures print a replay blob
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the wire ------------------------------------------------------------------------------


def frame(event_type: Any, data: Any = None, payload: bytes = b"") -> bytes:
    """A well-formed event as a wyoming peer writes it: JSON header line, data JSON, payload."""
    body = json.dumps(data).encode() if data is not None else b""
    header: dict[str, Any] = {"type": event_type}
    if body:
        header["data_length"] = len(body)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + body + payload


@dataclass
class WireEvent:
    type: str
    data: dict[str, Any]
    payload: bytes


def parse_events(raw: bytes) -> tuple[list[WireEvent], int]:
    """The complete events at the start of what the server sent, and where the incomplete rest begins.
    Anything a wyoming peer would not write fails an assertion."""
    events: list[WireEvent] = []
    pos = 0
    while (end := raw.find(b"\n", pos)) >= 0:
        header = json.loads(raw[pos:end])
        assert isinstance(header, dict) and isinstance(header.get("type"), str), header
        data_length = header.get("data_length") or 0
        payload_length = header.get("payload_length") or 0
        assert isinstance(data_length, int) and data_length >= 0, header
        assert isinstance(payload_length, int) and payload_length >= 0, header
        data_end = end + 1 + data_length
        if data_end + payload_length > len(raw):
            break
        data = json.loads(raw[end + 1 : data_end]) if data_length else header.get("data", {})
        assert isinstance(data, dict), data
        events.append(WireEvent(header["type"], data, raw[data_end : data_end + payload_length]))
        pos = data_end + payload_length
    return events, pos


def parse_all(raw: bytes) -> list[WireEvent]:
    """Everything a closed connection carried: whole events and nothing after the last one."""
    events, end = parse_events(raw)
    assert end == len(raw), f"the server's last event is cut off: {raw[end:][:200]!r}"
    return events


SERVER_EVENTS = {"info", "pong", "audio-start", "audio-chunk", "audio-stop", "synthesize-stopped", "error"}


def check_protocol(events: list[WireEvent]) -> None:
    """What a client may rely on: known events only, an error only as the last event, audio chunks only
    inside audio-start ... audio-stop with timestamps that count the samples, synthesize-stopped only
    right after an audio-stop."""
    samples: int | None = None  # samples of the open response; None outside one
    for i, event in enumerate(events):
        assert event.type in SERVER_EVENTS, event.type
        if event.type == "error":
            assert i == len(events) - 1, f"events after an error: {[e.type for e in events[i:]]}"
            assert isinstance(event.data.get("text"), str) and event.data["text"], event.data
            assert isinstance(event.data.get("code"), str), event.data
        elif event.type == "info":
            assert event.data.get("tts"), event.data
        elif event.type == "audio-start":
            assert samples is None, "audio-start inside a response"
            assert (event.data["rate"], event.data["width"], event.data["channels"]) == (
                RATE,
                WIDTH,
                CHANNELS,
            )
            samples = 0
        elif event.type == "audio-chunk":
            assert samples is not None, "audio-chunk outside a response"
            assert (event.data["rate"], event.data["width"], event.data["channels"]) == (
                RATE,
                WIDTH,
                CHANNELS,
            )
            assert event.payload and len(event.payload) % (WIDTH * CHANNELS) == 0, len(event.payload)
            assert event.data.get("timestamp") == samples * 1000 // RATE, (event.data, samples)
            samples += len(event.payload) // (WIDTH * CHANNELS)
        elif event.type == "audio-stop":
            assert samples is not None, "audio-stop without audio-start"
            assert event.data.get("timestamp") == samples * 1000 // RATE, (event.data, samples)
            samples = None
        elif event.type == "synthesize-stopped":
            assert i > 0 and events[i - 1].type == "audio-stop", [e.type for e in events[: i + 1]]


def audio_of(events: list[WireEvent]) -> np.ndarray:
    return np.frombuffer(b"".join(e.payload for e in events if e.type == "audio-chunk"), dtype="<i2")


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=DEADLINE)


def read_until(
    sock: socket.socket, seconds: float, stop: Callable[[list[WireEvent]], bool] | None = None
) -> tuple[bytes, str]:
    """Read until the server closes ("closed") or resets ("reset") the connection, stop(events) holds
    ("stopped"), or seconds pass ("timeout")."""
    raw = bytearray()
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(raw), "reset"
        if not chunk:
            return bytes(raw), "closed"
        raw += chunk
        if stop is not None and stop(parse_events(bytes(raw))[0]):
            return bytes(raw), "stopped"
    return bytes(raw), "timeout"


def ends_with(event_type: str) -> Callable[[list[WireEvent]], bool]:
    return lambda events: bool(events) and events[-1].type in (event_type, "error")


def reset(sock: socket.socket) -> None:
    """Close abruptly: an RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def speak(port: int, text: str, voice: str = "ryan") -> np.ndarray:
    """A one-shot synthesize as Home Assistant sends it; its audio, after checking the response."""
    with connect(port) as sock:
        sock.sendall(frame("synthesize", {"text": text, "voice": {"name": voice}}))
        raw, how = read_until(sock, DEADLINE, ends_with("audio-stop"))
    events = parse_events(raw)[0]
    assert how == "stopped" and events[-1].type == "audio-stop", (how, [e.type for e in events][-3:])
    check_protocol(events)
    return audio_of(events)


# -- the server ------------------------------------------------------------------------------


class ServerLog:
    """The server's output as conftest's ServerProcess reads it."""

    def __init__(self, process) -> None:
        self.lines: list[str] = process.lines

    def failures_since(self, start: int) -> list[str]:
        """Lines that show the server treating input as an internal failure (a traceback, ERROR)."""
        bad = (" ERROR ", " CRITICAL ", "Traceback", "Task exception was never retrieved")
        return [line for line in self.lines[start:] if any(word in line for word in bad)]


@dataclass
class Fuzzed:
    process: Any  # conftest's ServerProcess
    log: ServerLog
    witness: np.ndarray  # the witness sentence's audio before any fuzzing
    references: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.process.port

    def reference(self, text: str, voice: str) -> np.ndarray:
        """A sentence's audio asked for alone (one-shot), computed once."""
        if (text, voice) not in self.references:
            self.references[text, voice] = speak(self.port, text, voice)
        return self.references[text, voice]

    def check_still_serving(self, log_start: int) -> None:
        """The server is alive, logged no internal failure, and speaks the witness as at the start."""
        assert self.process.process.poll() is None, "the server exited"
        assert same_audio(speak(self.port, WITNESS_TEXT), self.witness), "the witness audio changed"
        failures = self.log.failures_since(log_start)
        assert not failures, "".join(failures)[-3000:]

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tiny_models):
    with running_server(["--model", str(tiny_models["custom_voice"]), *SERVER_ARGS]) as process:
        log = ServerLog(process)
        try:
            witness = speak(process.port, WITNESS_TEXT)
            assert witness.size > 0
            yield Fuzzed(process, log, witness)
        finally:
            if os.environ.get("SHOW_SERVER_LOG"):
                print("".join(log.lines))


# -- strategies ------------------------------------------------------------------------------

EVENT_TYPES = [
    "describe",
    "synthesize",
    "synthesize-start",
    "synthesize-chunk",
    "synthesize-stop",
    "synthesize-stopped",
    "ping",
    "pong",
    "audio-start",
    "audio-chunk",
    "audio-stop",
    "error",
    "info",
    "transcribe",
]
SENTENCES = [
    "Hello.",
    "Turn on the light.",
    "It is 21 degrees.",
    "Dr. Smith, 3. Mai!",
    "你好。",
    "",
    "Hi. " * 1300,
]
SSML = [
    "<speak>Hello.</speak>",
    '<speak>One.<break time="300ms"/>Two.</speak>',
    '<speak xml:lang="de"><say-as interpret-as="cardinal">42</say-as></speak>',
    "<speak><p>a</p><s>b</s></speak>",
    "<speak>",
    "<!DOCTYPE x><speak/>",
    "<voice>x</voice>",
]

# Text a client could send: no lone surrogates (test_lone_surrogates_... covers those).
any_text = st.text(st.characters(codec="utf-8"), max_size=16)
speakable = st.sampled_from(SENTENCES + SSML) | any_text
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
names = st.sampled_from(["ryan", "vivian", "RYAN", "nobody", "../ryan", " ", ""])
languages = st.sampled_from(["en", "de", "english", "zh-CN", "xx", "auto", ""])
# Field values: mostly plausible ones (which reach deeper), else any JSON value.
voices = st.one_of(
    st.fixed_dictionaries(
        {"name": names | json_values},
        optional={"speaker": names | json_values, "language": languages | json_values},
    ),
    st.fixed_dictionaries(
        {}, optional={"speaker": names, "language": languages, "name": json_values, "extra": json_values}
    ),
    json_values,
)
texts = st.one_of(speakable, speakable, json_values)
text_formats = st.sampled_from(["text", "ssml", "ssml", "SSML", "markdown"]) | json_values
event_data = st.fixed_dictionaries(
    {}, optional={"text": texts, "voice": voices, "text_format": text_formats, "extra": json_values}
)
requests = st.fixed_dictionaries({"text": texts}, optional={"voice": voices, "text_format": text_formats})


@dataclass(frozen=True)
class Frame:
    """Bytes for the socket, and the first answer they must get when they come first (or None)."""

    raw: bytes
    answer: str | None = None


good_voice = st.sampled_from(["ryan", "vivian"])
valid_frames = st.one_of(
    st.builds(
        lambda t, v: Frame(frame("synthesize", {"text": t, "voice": {"name": v}})), speakable, good_voice
    ),
    st.builds(lambda v: Frame(frame("synthesize-start", {"voice": {"name": v}})), good_voice),
    st.builds(lambda t: Frame(frame("synthesize-chunk", {"text": t})), speakable),
    st.just(Frame(frame("synthesize-stop"))),
    st.just(Frame(frame("describe"), "info")),
    st.builds(lambda t: Frame(frame("ping", {"text": t}), "pong"), any_text),
)


# Well-framed requests whose fields have any type and value.
field_frames = st.one_of(
    st.builds(lambda data: Frame(frame("synthesize", data)), requests),
    st.builds(lambda data: Frame(frame("synthesize-chunk", data)), requests),
    st.builds(lambda data: Frame(frame("synthesize-start", data)), event_data),
    st.builds(
        lambda event_type, data: Frame(frame(event_type, data)),
        st.sampled_from(
            ["synthesize", "synthesize-start", "synthesize-chunk", "synthesize-stop", "describe", "ping"]
        ),
        event_data | json_values,
    ),
)


@st.composite
def odd_frames(draw) -> Frame:
    """An event with unusual fields or an unusual encoding: lengths that lie or have the wrong type."""
    event_type = draw(st.sampled_from(EVENT_TYPES) | any_text | json_values)
    data = draw(event_data | json_values)
    body = json.dumps(data, ensure_ascii=draw(st.booleans())).encode()
    header: dict[str, Any] = {"type": event_type}
    how = draw(st.sampled_from(["exact", "inline", "short", "long", "wrong type", "huge", "payload"]))
    tail = body
    if how == "exact":
        header["data_length"] = len(body)
    elif how == "inline":
        header["data"], tail = data, b""
    elif how == "short":  # the rest of the data is read as the next header
        header["data_length"] = draw(st.integers(0, len(body) - 1))
    elif how == "long":  # the next event is swallowed as data
        header["data_length"] = len(body) + draw(st.integers(1, 64))
    elif how == "wrong type":
        header["data_length"] = draw(
            st.sampled_from([str(len(body)), float(len(body)), len(body) + 0.5, -1, True, [1], {}])
            | json_values
        )
    elif how == "huge":
        key = draw(st.sampled_from(["data_length", "payload_length"]))
        header["data_length"] = len(body)
        header[key] = draw(st.sampled_from([10**12, 2**63, 10**100]))
    else:
        payload = draw(st.binary(min_size=1, max_size=64))
        header.update(data_length=len(body), payload_length=len(payload))
        tail += payload
    if draw(st.booleans()):
        header[draw(st.sampled_from(["version", "data", "type", "extra"]))] = draw(json_values)
    return Frame(json.dumps(header).encode() + b"\n" + tail)


malformed_frames = st.one_of(
    st.builds(Frame, st.binary(max_size=48)),  # garbage
    st.builds(lambda b: Frame(b + b"\n"), st.binary(max_size=48)),  # a garbage line
    st.builds(lambda v: Frame(json.dumps(v).encode() + b"\n"), json_values),  # JSON, not an event object
    st.builds(
        lambda d: Frame(json.dumps(d).encode() + b"\n"), st.dictionaries(any_text, json_values, max_size=3)
    ),
    st.just(Frame(b'{"type": "synthesize", "data": {"text": ' + b"[" * 5000 + b"]" * 5000 + b"}}\n")),  # deep
    st.just(Frame(b"x" * 70_000 + b"\n")),  # a header line longer than the reader's 64 KiB limit
)

ENDINGS = ["half-close", "half-close", "cut mid-event", "close", "reset", "reset after audio"]


@dataclass
class Script:
    """What one misbehaving connection does."""

    frames: list[Frame]
    ending: str  # how the client leaves
    cut: int  # for "cut mid-event": bytes sent before the client closes its side
    pieces: int  # the bytes go out in this many writes

    @property
    def raw(self) -> bytes:
        raw = b"".join(f.raw for f in self.frames)
        return raw[: self.cut] if self.ending == "cut mid-event" else raw


@st.composite
def scripts(draw) -> Script:
    kinds = st.one_of(valid_frames, valid_frames, field_frames, odd_frames(), malformed_frames)
    frames = draw(st.lists(kinds, max_size=6))
    ending = draw(st.sampled_from(ENDINGS))
    if ending == "reset after audio" or draw(st.booleans()):  # something in flight while it misbehaves
        frames.insert(0, Frame(frame("synthesize", {"text": "Audio in flight."})))
    if not frames:
        frames = [Frame(b"")]
    total = sum(len(f.raw) for f in frames)
    return Script(frames, ending, draw(st.integers(0, max(total - 1, 0))), draw(st.integers(1, 4)))


def run_script(port: int, script: Script) -> str:
    """Play a script on a fresh connection and check what comes back (when the client stays to read);
    a word on the outcome, for hypothesis's statistics."""
    raw = script.raw
    step = max(1, -(-len(raw) // script.pieces))
    with connect(port) as sock:
        try:
            for start in range(0, len(raw), step):
                sock.sendall(raw[start : start + step])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed already (an error): what it sent is still to be read
        if script.ending in ("close", "reset"):
            if script.ending == "reset":
                reset(sock)
            return script.ending
        if script.ending == "reset after audio":
            _, how = read_until(sock, DEADLINE, lambda events: any(e.type == "audio-chunk" for e in events))
            reset(sock)
            return f"reset after audio: {how}"
        with contextlib.suppress(OSError):  # the server may have reset the connection already
            sock.shutdown(socket.SHUT_WR)
        received, how = read_until(sock, DEADLINE)
    # Nothing is pending once the client has closed its side: the server finishes and closes.
    assert how in ("closed", "reset"), f"the server kept the connection {how} for {DEADLINE} s"
    events = parse_all(received)
    check_protocol(events)
    first = script.frames[0]
    if first.answer is not None and events and events[0].type != "error":
        assert events[0].type == first.answer, [e.type for e in events]
    if events and events[-1].type == "error":
        return f"error {events[-1].data['code']}"
    return "closed after " + ("audio" if "audio-stop" in {e.type for e in events} else "no audio")


# -- properties ------------------------------------------------------------------------------


@FUZZ
@given(script=scripts())
def test_a_misbehaving_connection_is_answered_or_closed_and_the_server_keeps_serving(server, script):
    """Any byte stream: the connection gets well-formed events and is closed (never left hanging), the
    server logs no internal failure, and the next client's audio is unchanged."""
    log_start = len(server.log.lines)
    hypothesis.event(run_script(server.port, script))
    server.check_still_serving(log_start)


TEXTS = ["Good morning to the kitchen.", "The door is locked. Sleep well."]


@st.composite
def good_streams(draw) -> tuple[str, str, list[str], list[float], bool]:
    """A streamed request as Home Assistant sends it, cut at random places, with pauses between pieces."""
    text = draw(st.sampled_from(TEXTS))
    cuts = sorted(draw(st.sets(st.integers(1, len(text) - 1), max_size=4)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    pauses = draw(st.lists(st.sampled_from([0.0, 0.01, 0.05]), min_size=len(pieces), max_size=len(pieces)))
    return text, draw(good_voice), pieces, pauses, draw(st.booleans())


def stream_audio(port: int, voice: str, pieces: list[str], pauses: list[float], echo: bool) -> np.ndarray:
    with connect(port) as sock:
        sock.sendall(frame("synthesize-start", {"voice": {"name": voice}}))
        for piece, pause in zip(pieces, pauses, strict=True):
            time.sleep(pause)
            sock.sendall(frame("synthesize-chunk", {"text": piece}))
        if echo:  # Home Assistant repeats the whole text for servers that do not stream
            sock.sendall(frame("synthesize", {"text": "".join(pieces), "voice": {"name": voice}}))
        sock.sendall(frame("synthesize-stop"))
        raw, how = read_until(sock, DEADLINE, ends_with("synthesize-stopped"))
    events = parse_events(raw)[0]
    assert how == "stopped" and events[-1].type == "synthesize-stopped", (how, [e.type for e in events][-3:])
    check_protocol(events)
    return audio_of(events)


@settings(FUZZ, max_examples=max(3, EXAMPLES // 6))
@given(streams=st.lists(good_streams(), min_size=2, max_size=3), script=scripts())
def test_interleaved_streams_get_their_solo_audio_beside_a_misbehaving_connection(server, streams, script):
    """Good streams from several connections at once, and a fuzzed one beside them: each good stream's
    audio is exactly what its text gave alone (the inference queue interleaves them step by step)."""
    expected = [server.reference(text, voice) for text, voice, *_ in streams]
    log_start = len(server.log.lines)
    with ThreadPoolExecutor(len(streams) + 1) as pool:
        good = [pool.submit(stream_audio, server.port, *stream[1:]) for stream in streams]
        bad = pool.submit(run_script, server.port, script)
        got = [future.result() for future in good]
        bad.result()
    for audio, reference in zip(got, expected, strict=True):
        assert same_audio(audio, reference)
    server.check_still_serving(log_start)


# -- stuck readers, and what the fuzzing found ---------------------------------------------------


STUCK = {
    "silent": b"",
    "half a header line": b'{"type": "descr',
    "data cut short": b'{"type": "synthesize", "data_length": 100}\n{"text": "He',
    "silent after audio": frame("synthesize", {"text": "Hello."}),
}
# Lengths no event of a TTS client needs: refused at once with an error, before anything is buffered.
REFUSED = {
    "data_length 10**12": b'{"type": "synthesize", "data_length": 1000000000000}\n{"text": "Hello."}',
    "payload_length 10**12": b'{"type": "audio-chunk", "payload_length": 1000000000000}\n\x00\x01',
    "data_length Infinity": b'{"type": "synthesize", "data_length": Infinity}\n{"text": "Hello."}',
}


def test_stuck_and_silent_connections_are_closed_after_the_idle_timeout(server):
    """A client that stops mid-event (a huge declared length, a cut header or data) or says nothing more
    holds a reader only until --idle-timeout; all of them at once, each closed in time."""
    log_start = len(server.log.lines)

    def hold(raw: bytes) -> tuple[str, float, list[WireEvent]]:
        with connect(server.port) as sock:
            sock.sendall(raw)
            started = time.monotonic()
            received, how = read_until(sock, IDLE_TIMEOUT + 10)
            return how, time.monotonic() - started, parse_all(received)

    cases = {**STUCK, **REFUSED}
    with ThreadPoolExecutor(len(cases)) as pool:
        outcomes = dict(zip(cases, pool.map(hold, cases.values()), strict=True))
    for name, (how, seconds, events) in outcomes.items():
        assert how == "closed", f"{name}: {how}"
        if name in REFUSED:
            assert seconds < IDLE_TIMEOUT - 0.5, f"{name}: closed after {seconds:.1f} s"
            assert [e.data["code"] for e in events if e.type == "error"] == ["invalid-event"], name
        else:
            assert IDLE_TIMEOUT - 0.5 < seconds < IDLE_TIMEOUT + 8, f"{name}: closed after {seconds:.1f} s"
        check_protocol(events)
    assert [e.type for e in outcomes["silent after audio"][2]][-1] == "audio-stop"
    server.check_still_serving(log_start)


def test_a_silent_open_stream_is_closed_after_the_idle_timeout(server):
    """A client that opens a stream and then says nothing has nothing in flight: it is dropped too."""
    with connect(server.port) as sock:
        sock.sendall(frame("synthesize-start", {"voice": {"name": "ryan"}}))
        sock.sendall(frame("synthesize-chunk", {"text": "Half a sent"}))
        _, how = read_until(sock, IDLE_TIMEOUT + 2.5)
    assert how == "closed"


def test_a_huge_declared_length_does_not_fill_the_servers_memory(server):
    """A header declaring 10**12 bytes of data, then 256 MiB of them at loopback speed: the server must
    not buffer them all (it may close the connection, refuse the length, or push back)."""
    before = server.rss_mb()
    block = bytes(1 << 20)
    with connect(server.port) as sock:
        sock.settimeout(3)  # a server that pushes back makes sendall time out: that passes
        try:
            sock.sendall(b'{"type": "synthesize", "data_length": 1000000000000}\n')
            for _ in range(256):
                sock.sendall(block)
        except (TimeoutError, ConnectionError):
            pass
        time.sleep(0.3)  # what is on its way is read
        grown = server.rss_mb() - before
    assert grown < 64, f"the server's memory grew by {grown:.0f} MB"


def test_an_event_split_across_the_idle_timeout_is_read_whole(server):
    """While the connection is busy speaking, a synthesize-chunk whose data arrives in two halves, the
    second after --idle-timeout: its data is read as data (here it would also parse as a describe)."""
    data = b'{"text": "Hello.", "type": "describe"}\n'  # valid data, and a valid header line
    long_text = " ".join(f"Sentence {n} is here." for n in range(60))  # busy for longer than the wait
    with connect(server.port) as sock:
        sock.sendall(frame("synthesize-start", {"voice": {"name": "ryan"}}))
        sock.sendall(frame("synthesize-chunk", {"text": long_text}))
        time.sleep(0.2)
        sock.sendall(b'{"type": "synthesize-chunk", "data_length": %d}\n' % len(data) + data[:5])
        time.sleep(IDLE_TIMEOUT + 1)
        sock.sendall(data[5:] + frame("synthesize-stop"))
        raw, how = read_until(sock, DEADLINE, ends_with("synthesize-stopped"))
    events = parse_events(raw)[0]
    types = [e.type for e in events]
    assert "info" not in types, "the chunk's data was read as a describe event"
    assert how == "stopped" and types[-1] == "synthesize-stopped", (how, types[-3:])


EMPTY = frame("synthesize", {"text": "", "voice": {"name": "ryan"}})  # audio-start, audio-stop at once
ENDED_WHILE_WRITING = {
    # The error closes the connection; the client still reads, waiting for the close.
    "an error": (EMPTY + frame("synthesize-chunk", {"text": "Hello."}), False),
    # The client closes its side with a stream open: the server drops the stream.
    "the client leaving mid-stream": (EMPTY + frame("synthesize-start", {"voice": {"name": "ryan"}}), True),
}


@pytest.mark.parametrize(("raw", "half_close"), ENDED_WHILE_WRITING.values(), ids=ENDED_WHILE_WRITING.keys())
def test_a_connection_ended_while_audio_is_written_is_closed(server, raw, half_close):
    """A connection that ends (an error, or the client leaving mid-stream) while its speaker is writing
    a response is closed. The race depends on scheduling, so it is tried ten times; each closes in ms."""
    for attempt in range(10):
        with connect(server.port) as sock:
            sock.sendall(raw)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            _, how = read_until(sock, 3)
        assert how == "closed", f"attempt {attempt + 1}: the server kept the connection open"


SURROGATES = {
    "synthesize": frame("synthesize", {"text": "a\ud800b."}),
    "ssml": frame("synthesize", {"text": "<speak>a\ud800b.</speak>", "text_format": "ssml"}),
    "stream": frame("synthesize-start")
    + frame("synthesize-chunk", {"text": "a\ud800b."})
    + frame("synthesize-stop"),
    "ping": frame("ping", {"text": "\ud800"}),
}


@pytest.mark.parametrize("raw", SURROGATES.values(), ids=SURROGATES.keys())
def test_lone_surrogates_are_refused_as_invalid_input(server, raw):
    """Text with a lone surrogate (legal JSON, not text) is the client's mistake: an invalid-event error,
    not an internal failure in the log."""
    log_start = len(server.log.lines)
    with connect(server.port) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        received, _ = read_until(sock, DEADLINE)
    errors = [e for e in parse_all(received) if e.type == "error"]
    assert server.process.process.poll() is None
    failures = server.log.failures_since(log_start)
    assert not failures, "".join(failures)[-2000:]
    assert len(errors) == 1 and errors[0].data["code"] == "invalid-event", errors

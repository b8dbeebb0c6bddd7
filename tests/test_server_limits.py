"""Limits, timeouts, start-up errors and shutdown of the real server on the tiny model.

Each test starts its own server where the limit under test needs a flag, and talks to it as a client of
that kind would: one that hogs connections, pipelines too much, stops reading, goes silent, or is
still listening when the service is stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import free_port, run_server_command, running_server
from test_server import QUICK, SAMPLES_PER_FRAME, TIMEOUT, audio_of, is_audio_stop, same_audio, send
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from wyoming_qwen3tts.wyoming.wire import event_bytes

FRAMES = 16  # QUICK's --max-frames


WORDS = "one two three four five six seven eight nine ten eleven twelve".split()


def sentences(n: int) -> str:
    """n short sentences (no digits: "number 3." would join the next sentence, as "am 3. Mai" does)."""
    return " ".join(f"This is sentence {WORDS[i % len(WORDS)]}." for i in range(n))


def error_code(events) -> str | None:
    errors = [Error.from_event(e) for e in events if Error.is_type(e.type)]
    return errors[-1].code if errors else None


async def read_until_closed(port: int) -> list:
    events = []
    async with AsyncTcpClient("127.0.0.1", port) as client:
        while (event := await asyncio.wait_for(client.read_event(), TIMEOUT)) is not None:
            events.append(event)
    return events


def test_idle_connections_make_room_for_new_ones(tiny_models):
    """200 connections held open and silent (a crashed satellite, a port scanner) do not lock anyone out:
    at the bound (32 by default) the longest-idle ones are closed cleanly to make room."""
    with running_server(["--model", str(tiny_models["custom_voice"]), *QUICK]) as server:

        async def scenario():
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(200)]
            started = time.monotonic()
            info = await send(server.uri, Describe().event(), until=lambda e: Info.is_type(e.type))
            describe_seconds = time.monotonic() - started
            one_shot = await send(server.uri, Synthesize(text="Hi.").event(), until=is_audio_stop)
            streamed = await send(
                server.uri,
                SynthesizeStart().event(),
                SynthesizeChunk(text="Hello there. ").event(),
                SynthesizeStop().event(),
                until=lambda e: SynthesizeStopped.is_type(e.type),
            )
            # The oldest held connections were closed: an orderly end of stream, not a reset.
            ends = []
            for reader, writer in held:
                try:
                    ends.append(await asyncio.wait_for(reader.read(), 0.05))
                except asyncio.TimeoutError:
                    ends.append(None)  # still open
                writer.close()
            return info, describe_seconds, one_shot, streamed, ends

        info, describe_seconds, one_shot, streamed, ends = asyncio.run(scenario())
        log = server.stop()
    assert Info.is_type(info[-1].type) and describe_seconds < 1.0  # Home Assistant waits 1 s
    assert len(audio_of(one_shot)) == FRAMES * SAMPLES_PER_FRAME and error_code(one_shot) is None
    assert SynthesizeStopped.is_type(streamed[-1].type) and len(audio_of(streamed)) > 0
    assert ends[0] == b"" and ends.count(b"") >= 200 - 32 + 1  # closed, with nothing sent to them
    assert ends.count(None) <= 31  # at most the bound stays open, the new connections counted
    assert "to make room for a new connection" in log and "Refusing" not in log


def test_when_every_connection_is_speaking_a_new_one_gets_busy(tiny_models):
    """At the bound with every connection working, a new one is refused with busy and closed; none of the
    working connections loses a byte of its audio."""
    limit = 32
    text = "The kitchen light is on."
    args = ["--model", str(tiny_models["custom_voice"]), *QUICK, "--max-connections", str(limit)]
    with running_server(args) as server:
        solo = audio_of(asyncio.run(send(server.uri, Synthesize(text=text).event(), until=is_audio_stop)))

        async def scenario():
            clients = []
            for _ in range(limit):  # each holds a stream open: working, not idle
                client = AsyncTcpClient("127.0.0.1", server.port)
                await client.connect()
                await client.write_event(SynthesizeStart().event())
                await client.write_event(SynthesizeChunk(text=text).event())
                clients.append(client)
            await asyncio.sleep(0.5)  # every stream is open on the server
            refused = await read_until_closed(server.port)
            results = []
            for client in clients:
                await client.write_event(SynthesizeStop().event())
            for client in clients:
                events = []
                while (event := await asyncio.wait_for(client.read_event(), TIMEOUT)) is not None:
                    events.append(event)
                    if SynthesizeStopped.is_type(event.type):
                        break
                results.append(events)
                await client.disconnect()
            return refused, results

        refused, results = asyncio.run(scenario())
    assert error_code(refused) == "busy" and refused[-1].type == "error"
    for events in results:
        assert error_code(events) is None
        assert same_audio(audio_of(events), solo)  # greedy: every sample of its solo audio


def test_too_many_queued_sentences_on_one_connection_is_busy(tiny_models):
    args = ["--model", str(tiny_models["custom_voice"]), *QUICK, "--max-queued-sentences", "5"]
    with running_server(args) as server:
        events = asyncio.run(send(server.uri, Synthesize(text=sentences(12)).event()))
        fine = asyncio.run(send(server.uri, Synthesize(text=sentences(3)).event(), until=is_audio_stop))
    assert error_code(events) == "busy"
    assert len(audio_of(fine)) == 3 * FRAMES * SAMPLES_PER_FRAME


def test_text_without_any_punctuation_is_spoken_in_pieces(tiny_models):
    text = " ".join(f"word{i}" for i in range(900))[:5000]  # 5,000 characters, no punctuation
    args = ["--model", str(tiny_models["custom_voice"]), *QUICK, "--max-frames", "2"]
    with running_server(args) as server:
        events = asyncio.run(send(server.uri, Synthesize(text=text).event(), until=is_audio_stop))
    assert events[-1].type == "audio-stop" and error_code(events) is None
    pieces = len(audio_of(events)) // (2 * SAMPLES_PER_FRAME)
    assert pieces >= 5000 // 300  # every piece of at most 300 characters was spoken


def test_a_silent_connection_is_closed_after_the_idle_timeout(tiny_models):
    args = ["--model", str(tiny_models["custom_voice"]), *QUICK, "--idle-timeout", "1"]
    with running_server(args) as server:

        async def wait_for_close() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            return time.monotonic() - started

        closed_after = asyncio.run(wait_for_close())
        # A client waiting for audio is not idle: a synthesis longer than the timeout still completes.
        long = asyncio.run(send(server.uri, Synthesize(text=sentences(4)).event(), until=is_audio_stop))
    assert 0.9 <= closed_after < 5
    assert len(audio_of(long)) == 4 * FRAMES * SAMPLES_PER_FRAME


def test_a_client_that_stops_reading_is_dropped_and_frees_its_synthesis(tiny_models):
    write_timeout = 2.0
    args = [
        "--model",
        str(tiny_models["custom_voice"]),
        *QUICK,
        "--write-timeout",
        str(write_timeout),
        "--debug",
    ]
    with running_server(args) as server:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        stalled.connect(("127.0.0.1", server.port))
        client = f"wyoming 127.0.0.1:{stalled.getsockname()[1]}"
        request = Synthesize(text=sentences(80)).event()
        stalled.sendall(event_bytes(request))
        time.sleep(write_timeout + 10)  # never read: the server's writes block once the buffers are full
        other = asyncio.run(send(server.uri, Synthesize(text="Still here.").event(), until=is_audio_stop))
        stalled.close()
        log = server.stop()
    lines = log.splitlines()
    dropped = [i for i, line in enumerate(lines) if f"Dropping {client}" in line]
    assert dropped, log[-3000:]
    assert any("outcome=dropped" in line and client in line for line in lines)
    chunks_after = [line for line in lines[dropped[0] + 1 :] if f"{client}: chunk of" in line]
    assert len(chunks_after) <= 1  # freed within one chunk of the timeout
    assert len(audio_of(other)) == FRAMES * SAMPLES_PER_FRAME
    print(f"dropped after {len([1 for line in lines[: dropped[0]] if client + ': chunk of' in line])} chunks")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--uri", "stdio://"], "stdio:// is not supported"),
        (["--uri", "tcp://127.0.0.1"], "must look like tcp://"),
        (["--uri", "unix:///tmp/qwen3tts-test.sock", "--zeroconf"], "--zeroconf advertises a TCP port"),
        (["--http-uri", "http://0.0.0.0:8880"], "--http-uri 'http://0.0.0.0:8880' must look like"),
    ],
)
def test_bad_addresses_are_one_line_and_exit_2_before_loading(tiny_models, args, needle):
    result = run_server_command(["--model", str(tiny_models["custom_voice"]), *args])
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert "Loaded" not in result.stderr + result.stdout


def test_a_taken_wyoming_port_is_one_line_before_the_model_loads(tiny_models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server_command(
            ["--model", str(tiny_models["custom_voice"]), "--uri", f"tcp://127.0.0.1:{port}"]
        )
    assert result.returncode == 2
    assert (
        f"--uri tcp://127.0.0.1:{port}: cannot listen" in result.stderr and "Traceback" not in result.stderr
    )
    assert "Loaded" not in result.stderr + result.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory: the check cannot trip")
def test_an_unreadable_voices_dir_is_one_line(tiny_models, tmp_path):
    voices = tmp_path / "voices"
    voices.mkdir(mode=0)
    result = run_server_command(["--model", str(tiny_models["custom_voice"]), "--voices-dir", str(voices)])
    assert result.returncode == 2 and "cannot be read" in result.stderr


def test_sigterm_lets_the_sentence_in_flight_finish_then_exits_0(tiny_models):
    port = free_port()
    command = [sys.executable, "-m", "wyoming_qwen3tts", "--model", str(tiny_models["custom_voice"])]
    command += ["--uri", f"tcp://127.0.0.1:{port}", *QUICK, "--max-frames", "40"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)

        async def speak_through_sigterm() -> list:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await async_write_event(
                Synthesize(text=sentences(2), voice=SynthesizeVoice(name="ryan")).event(), writer
            )
            events = []
            while (event := await asyncio.wait_for(async_read_event(reader), TIMEOUT)) is not None:
                events.append(event)
                if len(events) == 2:  # audio-start and the first chunk: mid-sentence
                    process.send_signal(signal.SIGTERM)
                if is_audio_stop(event):
                    break
            writer.close()
            return events

        events = asyncio.run(speak_through_sigterm())
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    assert len(audio_of(events)) == 2 * 40 * SAMPLES_PER_FRAME
    assert "Stopping" in output
    with pytest.raises(OSError):  # and it no longer listens
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

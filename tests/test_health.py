"""The health check speaks the protocol: 0 for a serving TTS server, 1 with the reason otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time

import pytest
from conftest import free_port, running_server
from wyoming.event import async_read_event, async_write_event
from wyoming.info import AsrProgram, Attribution, Describe, Info

from wyoming_qwen3tts.wyoming import health


def run_health(*args: str) -> tuple[int, str, str, float]:
    """`python -m wyoming_qwen3tts.wyoming.health ARGS` as a container runs it: code, out, err, seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "wyoming_qwen3tts.wyoming.health", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def test_a_serving_server_is_healthy(tiny_models):
    with running_server(["--model", str(tiny_models["custom_voice"]), "--no-warmup"]) as server:
        code, out, err, _ = run_health("--uri", server.uri, "--timeout", "10")
        assert (code, err) == (0, "")
        assert out.startswith("healthy: qwen3-tts") and "9 voices" in out
        # The listening address as the server is given it (0.0.0.0) is checked on loopback.
        wildcard = server.uri.replace("127.0.0.1", "0.0.0.0")
        assert run_health("--uri", wildcard, "--timeout", "10")[0] == 0


def test_a_closed_port_is_refused():
    code, out, err, _ = run_health("--uri", f"tcp://127.0.0.1:{free_port()}")
    assert code == 1 and out == ""
    assert err.startswith("unhealthy: connection refused") and err.count("\n") == 1


def test_a_socket_that_never_answers_fails_within_the_timeout():
    with contextlib.closing(socket.socket()) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel completes the handshake; nobody ever reads or writes
        port = listener.getsockname()[1]
        code, out, err, seconds = run_health("--uri", f"tcp://127.0.0.1:{port}", "--timeout", "0.5")
    assert code == 1 and out == ""
    assert "no answer to describe" in err and "within 0.5 s" in err and err.count("\n") == 1
    assert seconds < 0.5 + 5  # the timeout, plus a Python start on a busy machine


async def fake_server(answer: Info | None) -> tuple[asyncio.AbstractServer, str]:
    """A server that answers describe with answer (or closes the connection when None)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        event = await async_read_event(reader)
        assert event is not None and Describe.is_type(event.type)
        if answer is not None:
            await async_write_event(answer.event(), writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_an_answer_without_a_tts_program_is_unhealthy():
    attribution = Attribution(name="", url="")
    asr = AsrProgram(
        name="whisper", attribution=attribution, installed=True, description=None, version=None, models=[]
    )
    server, uri = await fake_server(Info(asr=[asr]))
    async with server:
        with pytest.raises(health.HealthError, match="without an installed tts program"):
            await health.check(uri, 2.0)


async def test_a_server_that_hangs_up_is_unhealthy():
    server, uri = await fake_server(None)
    async with server:
        with pytest.raises(health.HealthError, match="closed the connection"):
            await health.check(uri, 2.0)


async def test_a_missing_unix_socket_is_named(tmp_path):
    with pytest.raises(health.HealthError, match="no socket"):
        await health.check(f"unix://{tmp_path / 'missing.sock'}", 1.0)


def test_bad_arguments_exit_1_not_2():  # container health checks reserve exit code 2
    assert run_health("--timeout", "0")[0] == 1
    code, _, err, _ = run_health("--uri", "stdio://")
    assert code == 1 and "stdio" in err


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("tcp://0.0.0.0:10200", "tcp://127.0.0.1:10200"),
        ("tcp://[::]:10300", "tcp://[::1]:10300"),
        ("tcp://192.168.1.5:10200", "tcp://192.168.1.5:10200"),
        ("unix:///run/tts.sock", "unix:///run/tts.sock"),
    ],
)
def test_wildcard_hosts_are_checked_on_loopback(uri, expected):
    assert health.loopback_uri(uri) == expected


def test_the_default_follows_the_servers_uri_variable(monkeypatch):
    monkeypatch.delenv(health.URI_ENV, raising=False)
    assert health.default_uri() == "tcp://127.0.0.1:10200"
    monkeypatch.setenv(health.URI_ENV, "tcp://0.0.0.0:10300")
    assert health.default_uri() == "tcp://127.0.0.1:10300"

"""Health check that speaks the protocol: send `describe`, expect an `info` with a tts program.

    python -m wyoming_qwen3tts.wyoming.health [--uri tcp://127.0.0.1:10200] [--timeout 1]

Exit code 0 when the answer arrives within the timeout (one line on stdout names the program), else 1
with one line on stderr saying why: refused, timed out, closed, or an answer without a tts program.
Exit code 1 also covers bad arguments, as container health checks reserve 2. Without --uri the check
goes to $QWEN3TTS_URI (a 0.0.0.0 or :: host becomes the loopback address), else tcp://127.0.0.1:10200.
The server listens only once its model is loaded, so a check during start-up reports "refused".

This module imports neither torch nor the server: a check costs a Python start and one round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from urllib.parse import urlsplit, urlunsplit

from wyoming.client import AsyncClient
from wyoming.info import Describe, Info

DEFAULT_URI = "tcp://127.0.0.1:10200"
URI_ENV = "QWEN3TTS_URI"
OK, UNHEALTHY = 0, 1


class HealthError(Exception):
    """Why the server is not healthy, as one line."""


def loopback_uri(uri: str) -> str:
    """uri with a wildcard host (0.0.0.0, ::) replaced by the loopback address it can be reached at."""
    parts = urlsplit(uri)
    if parts.scheme != "tcp" or parts.hostname not in ("0.0.0.0", "::"):
        return uri
    host = "[::1]" if parts.hostname == "::" else "127.0.0.1"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit((parts.scheme, host + port, parts.path, parts.query, parts.fragment))


def default_uri() -> str:
    return loopback_uri(os.environ.get(URI_ENV) or DEFAULT_URI)


async def _describe(uri: str) -> Info:
    try:
        client = AsyncClient.from_uri(uri)
    except ValueError as err:
        raise HealthError(f"bad --uri {uri!r}: {err}") from None
    if urlsplit(uri).scheme == "stdio":
        raise HealthError("bad --uri: stdio:// cannot be checked, use tcp:// or unix://")
    try:
        await client.connect()
    except ConnectionRefusedError:
        raise HealthError(
            f"connection refused at {uri} (server not running, or still loading its model)"
        ) from None
    except FileNotFoundError:
        raise HealthError(f"no socket at {uri} (server not running, or still loading its model)") from None
    except OSError as err:
        raise HealthError(f"cannot connect to {uri}: {err.strerror or err}") from None
    try:
        await client.write_event(Describe().event())
        while True:
            event = await client.read_event()
            if event is None:
                raise HealthError(f"{uri} closed the connection without answering describe")
            if Info.is_type(event.type):
                return Info.from_event(event)
    except (ConnectionError, EOFError) as err:
        raise HealthError(f"{uri} dropped the connection: {err}") from None
    except (ValueError, KeyError, UnicodeDecodeError):
        raise HealthError(f"{uri} answered with something that is not a Wyoming event") from None
    finally:
        try:
            await client.disconnect()
        except OSError:
            pass


async def check(uri: str, timeout: float) -> str:
    """Describe the server at uri; return a line naming its tts program, or raise HealthError."""
    started = time.monotonic()
    try:
        info = await asyncio.wait_for(_describe(uri), timeout)
    except asyncio.TimeoutError:
        raise HealthError(f"no answer to describe from {uri} within {timeout:g} s") from None
    elapsed_ms = (time.monotonic() - started) * 1000
    programs = [program for program in info.tts if program.installed]
    if not programs:
        raise HealthError(f"{uri} answered describe without an installed tts program")
    program = programs[0]
    voices = sum(len(p.voices) for p in programs)
    version = f" {program.version}" if program.version else ""
    return f"healthy: {program.name}{version} at {uri}, {voices} voices, answered in {elapsed_ms:.0f} ms"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(UNHEALTHY)


def positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m wyoming_qwen3tts.wyoming.health",
        description="Exit 0 if a Wyoming TTS server answers describe with a tts program in time, else 1.",
    )
    parser.add_argument(
        "--uri", default=None, help=f"server to check (default ${URI_ENV} on loopback, else {DEFAULT_URI})"
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=1.0, help="seconds for the whole check (default 1)"
    )
    args = parser.parse_args(argv)
    uri = loopback_uri(args.uri) if args.uri else default_uri()
    try:
        line = asyncio.run(check(uri, args.timeout))
    except HealthError as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return UNHEALTHY
    print(line)
    return OK


if __name__ == "__main__":
    sys.exit(main())

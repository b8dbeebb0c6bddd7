"""Reading Wyoming events off a socket with bounds a TTS server needs.

wyoming's own reader trusts the header: a declared data or payload length of
10**12 makes it buffer whatever arrives, and a timeout around it can cut an
event in half. Here the wait for the next event (the idle timeout) covers
only the header line, which is read whole or not at all; the rest of an event
must follow within body_timeout; lengths are capped; and text that cannot be
encoded as UTF-8 (lone surrogates from JSON escapes) is refused before it
reaches the tokenizer.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from typing import Any

from wyoming.event import Event, write_event

from ..requests import INVALID_EVENT

MAX_DATA_BYTES = 1 << 20  # a synthesize of 5,000 characters is about 10 KB of JSON
MAX_PAYLOAD_BYTES = 1 << 20  # a TTS server is sent no audio


class WireError(Exception):
    """The client sent something that is not a well-formed event; the message says what."""

    code = INVALID_EVENT


class Idle(Exception):
    """No event started within the idle timeout (nothing of the next one was consumed)."""


async def read_event(
    reader: asyncio.StreamReader,
    idle_timeout: float,
    body_timeout: float,
    speaking: Callable[[], bool] = lambda: False,
) -> Event | None:
    """The next event; None when the client has closed. Raises Idle or WireError.

    The rest of an event that stops halfway is waited for as long as the connection is idle
    otherwise (idle_timeout), or while speaking() holds, up to body_timeout.
    """
    try:
        line = await asyncio.wait_for(reader.readline(), idle_timeout or None)
    except asyncio.TimeoutError:
        raise Idle from None
    except ValueError:  # a header line past the reader's limit (64 KiB)
        raise WireError("event header line is too long") from None
    if not line.endswith(b"\n"):
        return None  # closed, possibly in the middle of a header
    header = _json_object(line, "event header")
    event_type = header.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise WireError("event header without a type")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise WireError(f"{event_type} event data must be an object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES, event_type)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES, event_type)
    try:
        if data_length:
            body = await _rest(reader, data_length, idle_timeout, body_timeout, speaking, event_type)
            data = {**data, **_json_object(body, f"{event_type} event data")}
        payload = None
        if payload_length:
            payload = await _rest(reader, payload_length, idle_timeout, body_timeout, speaking, event_type)
    except asyncio.IncompleteReadError:
        return None  # closed in the middle of an event
    _check_unicode(data, event_type)
    return Event(type=event_type, data=data, payload=payload)


async def _rest(
    reader: asyncio.StreamReader,
    size: int,
    idle_timeout: float,
    body_timeout: float,
    speaking: Callable[[], bool],
    event_type: str,
) -> bytes:
    # readexactly takes nothing from the buffer until all size bytes are there, so a wait cut
    # short by a timeout can simply be started again.
    started = asyncio.get_running_loop().time()
    while True:
        try:
            return await asyncio.wait_for(reader.readexactly(size), idle_timeout or body_timeout or None)
        except asyncio.TimeoutError:
            waited = asyncio.get_running_loop().time() - started
            if not speaking() or (body_timeout and waited >= body_timeout):
                raise WireError(f"{event_type} event stopped halfway for {waited:.0f} s") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise WireError(f"{what} is not JSON") from None
    except RecursionError:
        raise WireError(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a JSON object")
    return value


def _length(header: dict[str, Any], key: str, limit: int, event_type: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise WireError(f"{event_type} event {key} must be a whole number of bytes")
    if value > limit:
        raise WireError(f"{event_type} event {key} {value} is over this server's limit of {limit}")
    return value


def _check_unicode(data: dict[str, Any], event_type: str) -> None:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise WireError(f"{event_type} event data is nested too deeply") from None
    except UnicodeEncodeError:
        raise WireError(
            f"{event_type} event holds text that is not valid Unicode (a lone surrogate)"
        ) from None


def event_bytes(event: Event) -> bytes:
    """An event as it goes over the wire (for clients that write raw sockets: soak, tests)."""
    buffer = io.BytesIO()
    write_event(event, buffer)
    return buffer.getvalue()

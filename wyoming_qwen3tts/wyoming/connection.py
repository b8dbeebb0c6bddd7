"""One Wyoming client connection (bounded reads and writes, idle close, eviction, its responses in order
off the read loop) and a server's set of them. The event handler builds on Connection.

After any error event the connection is closed: some Home Assistant versions ignore error events and
would otherwise wait for audio forever.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

from wyoming.error import Error
from wyoming.event import Event, Eventable
from wyoming.server import AsyncEventHandler

from ..requests import BUSY, SYNTHESIS_FAILED, EngineError, RequestError, describe_client, short_failure
from .wire import Idle, WireError, read_event

_LOGGER = logging.getLogger(__name__)

BODY_TIMEOUT = 30.0  # seconds the rest of an event may take once its header line arrived
SEND_BUFFER_BYTES = 256 * 1024  # about 5 s of 24 kHz 16-bit audio

Job = Callable[[], Awaitable[None]]


class Connections:
    """The open connections of one server: a bound on their number, and what a shutdown waits for.

    The bound never locks out a well-behaved client: when it is reached, the connections that sit idle
    (nothing being spoken, no stream open) make room, longest idle first. Only when every open
    connection is working does a new one get `busy`.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit  # 0: no bound
        self.open: set[Connection] = set()

    def admit(self, connection: Connection) -> bool:
        """Count connection as open, closing idle ones to make room; False if all are working."""
        if self.limit and len(self.open) >= self.limit:
            idle = sorted((c for c in self.open if not c.busy), key=lambda c: c.last_active)
            excess = len(self.open) - self.limit + 1
            if len(idle) < excess:
                return False
            for evicted in idle[:excess]:
                self.open.discard(evicted)
                evicted.evict()
        self.open.add(connection)
        return True

    def busy(self) -> list[Connection]:
        """Connections with audio still to send (or a stream still open)."""
        return [connection for connection in self.open if connection.busy]


class Connection(AsyncEventHandler):
    """Serves one client: reads events until it leaves, sends each to dispatch(), and runs queued jobs
    (the responses) one after another while it keeps reading.

    A subclass implements dispatch() and says whether it is `receiving` (a request still arriving) and
    `speaking` (audio being made or waiting to be): a connection doing neither is idle.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        connections: Connections | None = None,
        idle_timeout: float = 300.0,  # seconds it may sit with nothing sent and nothing to say; 0: forever
        write_timeout: float = 30.0,  # seconds a write may wait for a client that stopped reading; 0: forever
    ) -> None:
        super().__init__(reader, writer)
        self.connections = connections if connections is not None else Connections()
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.client = describe_client(writer.get_extra_info("peername"), "wyoming")
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A bounded send buffer: a client that stops reading blocks our writes (and meets
            # --write-timeout) after a few seconds of audio, not after megabytes of it.
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self.closing = False  # after an error or stop(): queued work is dropped
        self.last_active = time.monotonic()  # the last event read or audio written; idle ones make room
        self._jobs: asyncio.Queue[Job | None] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None

    # -- what the subclass says ------------------------------------------------------------------

    async def dispatch(self, event: Event) -> None:
        """Act on one event; a RequestError or EngineError becomes an error event and ends the connection."""
        raise NotImplementedError

    @property
    def receiving(self) -> bool:
        """True while a request is still arriving (a stream is open)."""
        return False

    @property
    def speaking(self) -> bool:
        """True while audio is being made or waits to be (a silent client is not idle then)."""
        return False

    @property
    def busy(self) -> bool:
        """True while this connection has audio to send or a stream open (a shutdown waits for it)."""
        return not self.closing and (self.receiving or self.speaking)

    # -- connection life --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; unreadable input or a lost client ends only this connection."""
        if not self.connections.admit(self):
            limit = self.connections.limit
            _LOGGER.warning(
                "Refusing a connection from %s: all %d open connections are speaking", self.client, limit
            )
            await self.fail(
                f"The server is speaking on all of its {limit} connections; try again later", BUSY
            )
            self.writer.close()
            return
        try:
            await self._read_events()
        except ConnectionError as err:
            _LOGGER.debug("Connection lost: %s", err)
        except Exception as err:  # e.g. JSON that is not an event: wyoming raises instead of returning None
            _LOGGER.warning("Closing a connection that sent unreadable data: %r", err)
            _LOGGER.debug("Unreadable data", exc_info=True)
        finally:
            self.connections.open.discard(self)

    async def _read_events(self) -> None:
        """Read events until the client closes, an event is refused, or the connection sits idle.

        Idle means no event for the idle timeout while nothing is being spoken: an open stream
        whose client went silent counts as idle too.
        """
        self._is_running = True
        try:
            while self._is_running:
                try:
                    event = await read_event(
                        self.reader, self.idle_timeout, BODY_TIMEOUT, lambda: self.speaking
                    )
                except Idle:
                    if self.speaking:
                        continue
                    _LOGGER.info("Closing %s: idle for %.0f s", self.client, self.idle_timeout)
                    break
                except WireError as err:
                    _LOGGER.warning("Closing %s: %s", self.client, err)
                    await self.fail(str(err), err.code)
                    break
                self.last_active = time.monotonic()
                if event is None or not await self.handle_event(event):
                    break
        finally:
            await self.disconnect()
            self.writer.close()

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (see Connections.admit)."""
        _LOGGER.info(
            "Closing %s to make room for a new connection: idle for %.0f s",
            self.client,
            time.monotonic() - self.last_active,
        )
        self._is_running = False
        self.closing = True
        self.writer.close()  # what was written is still sent, then the close
        self.reader.feed_eof()  # the read loop sees the end at once

    async def stop(self) -> None:
        """Close the connection and drop its queued work."""
        self.closing = True
        if self._runner is not None and self._runner is not asyncio.current_task():
            self._runner.cancel()
        await super().stop()

    async def disconnect(self) -> None:
        """Called once the client is gone or the connection is being closed.

        A client that only closed its sending side still gets the audio it
        asked for; a stream left open or a closing connection is abandoned.
        """
        runner = self._runner
        if runner is None:
            return
        if self.closing or self.receiving:
            if self.receiving:
                _LOGGER.debug("Client left in the middle of a stream")
            self.closing = True
            runner.cancel()
        # The end of the queue, also for a runner that missed the cancel (asyncio.wait_for in Python
        # 3.11 swallows a cancel that arrives as the write it waits for completes): it stops there.
        self._jobs.put_nowait(None)
        await asyncio.wait([runner])

    # -- events -----------------------------------------------------------------------------------

    async def handle_event(self, event: Event) -> bool:
        """Take one event; False closes the connection."""
        if self.closing:
            return False
        try:
            await self.dispatch(event)
        except (RequestError, EngineError) as err:
            await self.fail(str(err), err.code)
            return False
        except ConnectionError as err:
            _LOGGER.debug("Connection lost: %s", err)
            return False
        except Exception as err:
            _LOGGER.exception("Failed to handle %s event", event.type)
            await self.fail(short_failure(err), SYNTHESIS_FAILED)
            return False
        return True

    # -- jobs: the connection's responses, in order, off the read loop -----------------------------

    def queue(self, job: Job) -> None:
        """Run job after those queued before it; a failure sends its error and closes the connection."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run_jobs(), name="qwen3tts speaker")
        self._jobs.put_nowait(job)

    async def _run_jobs(self) -> None:
        while (job := await self._jobs.get()) is not None and not self.closing:
            try:
                await job()
            except ConnectionError as err:
                self.closing = True
                _LOGGER.debug("Connection lost while speaking: %s", err)
                return
            except (RequestError, EngineError) as err:
                await self._fail_and_close(str(err), err.code)
                return
            except Exception as err:
                _LOGGER.exception("Synthesis failed")
                await self._fail_and_close(short_failure(err), SYNTHESIS_FAILED)
                return

    # -- writing ----------------------------------------------------------------------------------

    async def send(self, message: Eventable) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("connection closed")
        if self.closing and not isinstance(message, Error):
            # After an error (or stop) the error is the last event this client gets.
            raise ConnectionAbortedError("connection closing")
        try:
            await asyncio.wait_for(self.write_event(message.event()), self.write_timeout or None)
        except asyncio.TimeoutError:
            # The client stopped reading: drop it, so its synthesis and caches are freed.
            _LOGGER.warning("Dropping %s: a write waited %.0f s", self.client, self.write_timeout)
            self.closing = True
            self.writer.transport.abort()
            self.reader.feed_eof()
            raise ConnectionAbortedError("client stopped reading") from None

    async def fail(self, text: str, code: str) -> None:
        """Send an error event; the caller then closes the connection."""
        self.closing = True
        _LOGGER.warning("Sending error %s: %s", code, text)
        with suppress(ConnectionError):
            await self.send(Error(text=text, code=code))

    async def _fail_and_close(self, text: str, code: str) -> None:
        await self.fail(text, code)
        await self.stop()

"""The Wyoming server: listens on --uri with one handler per connection (up to --max-connections),
advertises itself over zeroconf, and on SIGTERM/SIGINT lets the audio in flight finish before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
from functools import partial
from typing import TYPE_CHECKING

from wyoming.server import AsyncServer

from ..service import SpeechService
from ..settings import SettingsError, WyomingOptions, wyoming_address
from .connection import Connections
from .handler import HandlerOptions, Qwen3TTSEventHandler

if TYPE_CHECKING:
    from .discovery import Advertisement

_LOGGER = logging.getLogger(__name__)


def check_wyoming_address(uri: str) -> None:
    """Fail now, not after loading the model, if the Wyoming port is taken or the socket path is in use."""
    address = wyoming_address(uri)
    if isinstance(address, str):
        if os.path.exists(address) and not stat.S_ISSOCK(os.stat(address).st_mode):
            raise SettingsError(f"--uri {uri}: {address} exists and is not a socket; choose another path")
        return
    try:
        with socket.create_server(address, reuse_port=False):
            pass
    except OSError as err:
        raise SettingsError(
            f"--uri {uri}: cannot listen ({err.strerror or err}); choose a free port or stop the other server"
        ) from None


async def serve_wyoming(options: WyomingOptions, service: SpeechService) -> None:
    """Serve Wyoming clients until cancelled, or drained by SIGTERM/SIGINT."""
    server = AsyncServer.from_uri(options.uri)
    connections = Connections(options.max_connections)
    handler_options = HandlerOptions(
        samples_per_chunk=options.samples_per_chunk,
        max_pending_jobs=options.max_queued_sentences,
        write_timeout=options.write_timeout,
        idle_timeout=options.idle_timeout,
    )
    handler = partial(Qwen3TTSEventHandler, service, handler_options, connections=connections)
    serving = asyncio.create_task(server.run(handler))
    advertisement = None
    try:
        # Advertise only once the socket accepts connections: a client acts on discovery at once.
        await wait_until_listening(server, serving)
        stopping = stop_signals()  # after wyoming's own SIGTERM handler, which it replaces
        _LOGGER.info("Ready at %s with voices: %s", options.uri, ", ".join(v.name for v in service.voices()))
        if options.zeroconf:
            advertisement = await advertise_server(options, options.zeroconf)
        signalled = asyncio.create_task(stopping.wait())
        await asyncio.wait([serving, signalled], return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            signalled.cancel()
            serving.result()
            return
        _LOGGER.info(
            "Stopping: no new connections; waiting up to %.0f s for audio in flight", options.shutdown_grace
        )
        listener = getattr(server, "_server", None)
        if listener is not None:
            listener.close()
        if advertisement is not None:
            await advertisement.close()
            advertisement = None
        await drain(connections, options.shutdown_grace)
        await server.stop()
    finally:
        serving.cancel()
        if advertisement is not None:
            await advertisement.close()


def stop_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT sent to this process (where it can take signal handlers).

    Python-level handlers, not the loop's add_signal_handler: the loop learns of a signal from a byte the
    C handler writes to a wakeup socket, and a child forked without exec inherits both. OpenVINO forks
    dozens of short-lived children from its threads while it converts and compiles, and sends some of
    them SIGTERM: that child's byte reached the loop and stopped the server (seen in CI). A Python-level
    handler runs only for a signal this process itself received.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(stopping.set)

    for signum in (signal.SIGTERM, signal.SIGINT):
        # wyoming's own SIGTERM handler (the loop's) would cut audio off, and is the loop's kind.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signum)
        with contextlib.suppress(ValueError):  # not the main thread: no signal handlers here
            signal.signal(signum, stop)
    return stopping


async def drain(connections: Connections, grace: float) -> None:
    """Wait until no connection has audio to send, or grace seconds."""
    deadline = asyncio.get_running_loop().time() + grace
    while (busy := connections.busy()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    if busy:
        _LOGGER.warning("Stopping with %d connections still speaking after %.0f s", len(busy), grace)


async def wait_until_listening(server: AsyncServer, serving: asyncio.Task, timeout: float = 10.0) -> None:
    """Return once the server's socket is open (wyoming keeps its asyncio server in `_server`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline and not serving.done():
        listener = getattr(server, "_server", None)
        if listener is not None and listener.is_serving():
            return
        await asyncio.sleep(0.01)
    if serving.done():
        serving.result()  # raises what stopped it (e.g. the port is taken)


async def advertise_server(options: WyomingOptions, name: str) -> Advertisement | None:
    """Advertise over zeroconf under name; on failure, warn and carry on without it."""
    from .discovery import advertise  # zeroconf is imported only when used

    address = wyoming_address(options.uri)
    if isinstance(address, str):  # settings.check refuses --zeroconf with a unix:// --uri already
        raise SettingsError("--zeroconf needs a tcp:// --uri with a port")
    host, port = address
    try:
        return await advertise(name, port, host, options.zeroconf_host)
    except (OSError, RuntimeError, ValueError) as err:
        _LOGGER.warning("Not advertising over zeroconf (%s); add the server by host and port instead", err)
        return None

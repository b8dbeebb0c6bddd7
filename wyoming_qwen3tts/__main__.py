"""Entry point: flags -> settings -> engine -> Wyoming server (+ zeroconf).

Start-up problems (a bad flag, a missing model, a model the backend cannot
serve) end the process with one line naming the problem and the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
from functools import partial
from typing import TYPE_CHECKING

from wyoming.server import AsyncServer

from . import __version__
from .engine import Engine
from .engine.model_files import ModelError
from .engine.registry import create_engine
from .languages import AUTO, to_model_language
from .requests import EngineError
from .service import Speech
from .settings import Settings, SettingsError, parse_settings, wyoming_address
from .wyoming.handler import Connections, HandlerOptions, InferenceQueue, Qwen3TTSEventHandler

if TYPE_CHECKING:
    from .http.server import HttpServer
    from .wyoming.discovery import Advertisement

_LOGGER = logging.getLogger("wyoming_qwen3tts")

PROGRAM_NAME = "qwen3-tts"


class StartupError(Exception):
    """The server cannot start; the message names the fix."""


def handler_options(settings: Settings, engine: Engine) -> HandlerOptions:
    """Check the default voice and language against the loaded model."""
    names = [voice.name for voice in engine.voices()]
    default_voice = settings.voice
    if default_voice is not None and default_voice.lower() not in {n.lower() for n in names}:
        raise StartupError(
            f"--voice {default_voice!r} is not a voice of this model; choose one of: {', '.join(names)}"
        )
    language = to_model_language(settings.language, list(engine.languages()))
    if language is None:
        raise StartupError(
            f"--language {settings.language!r} is not spoken by this model; use auto or one of: "
            f"{', '.join(engine.languages())}"
        )
    return HandlerOptions(
        default_voice=default_voice,
        default_language=language or AUTO,
        samples_per_chunk=settings.samples_per_chunk,
        max_text_chars=settings.max_text_chars,
        normalize=settings.normalize,
        max_pending_jobs=settings.max_queued_sentences,
        write_timeout=settings.write_timeout,
        idle_timeout=settings.idle_timeout,
        program_name=PROGRAM_NAME,
        version=__version__,
    )


def load_engine(settings: Settings) -> Engine:
    """Find the model, load it with the chosen backend and warm it up."""
    engine = create_engine(settings)
    if settings.warmup:
        _LOGGER.info("Warming up")
        engine.warmup()
    return engine


async def serve(settings: Settings) -> None:
    """Load the engine, then serve Wyoming clients (and the HTTP API if asked) until cancelled."""
    inference = InferenceQueue()
    http = None
    try:
        if settings.http_uri:
            # Up before the model loads, so /health can say "loading" meanwhile.
            http = await start_http(settings)
        # All torch work, loading and warm-up included, runs on the one inference thread: each thread
        # that calls into torch gets its own OpenMP team, and a second team spinning beside the first
        # made synthesis 40 % slower on 2 cores (real-time factor 3.86 against 2.73 in one thread).
        check_wyoming_address(settings.uri)  # before the minutes a model may take to load
        engine = await inference.run(load_engine, settings)
        options = handler_options(settings, engine)
        if http is not None:
            http.state.ready(Speech(engine, options.speech_options(), inference))
        await serve_engine(settings, engine, inference, options)
    finally:
        if http is not None:
            await http.stop()
        await inference.aclose()


def check_wyoming_address(uri: str) -> None:
    """Fail now, not after loading the model, if the Wyoming port is taken or the socket path is in use."""
    address = wyoming_address(uri)
    if isinstance(address, str):
        if os.path.exists(address) and not stat.S_ISSOCK(os.stat(address).st_mode):
            raise StartupError(f"--uri {uri}: {address} exists and is not a socket; choose another path")
        return
    try:
        with socket.create_server(address, reuse_port=False):
            pass
    except OSError as err:
        raise StartupError(
            f"--uri {uri}: cannot listen ({err.strerror or err}); choose a free port or stop the other server"
        ) from None


async def start_http(settings: Settings) -> HttpServer:
    """The OpenAI-compatible speech API on --http-uri, answering 503 until the model is ready."""
    from .http.app import ApiState  # FastAPI and PyAV are imported only when the API is on
    from .http.server import HttpServer, HttpStartError

    state = ApiState(
        model_name=settings.model,
        backend=settings.backend,
        api_key=settings.http_api_key,
        max_requests=settings.http_max_requests,
        voices_dir=settings.voices_dir,
    )
    try:
        server = HttpServer(settings.http_uri or "", state, grace=settings.shutdown_grace)
        await server.start()
    except HttpStartError as err:
        raise StartupError(str(err)) from None
    return server


async def serve_engine(
    settings: Settings, engine: Engine, inference: InferenceQueue, options: HandlerOptions | None = None
) -> None:
    """Serve Wyoming clients with a loaded engine until cancelled, or drained by SIGTERM/SIGINT."""
    options = options or handler_options(settings, engine)
    server = AsyncServer.from_uri(settings.uri)
    connections = Connections(settings.max_connections)
    handler = partial(Qwen3TTSEventHandler, engine, options, inference, connections=connections)
    serving = asyncio.create_task(server.run(handler))
    advertisement = None
    watching = None
    if settings.voices_dir is not None and settings.voices_reload_interval > 0:
        watching = asyncio.create_task(watch_voices(engine, inference, settings.voices_reload_interval))
    try:
        # Advertise only once the socket accepts connections: a client acts on discovery at once.
        await wait_until_listening(server, serving)
        stopping = stop_signals()  # after wyoming's own SIGTERM handler, which would cut audio off
        _LOGGER.info("Ready at %s with voices: %s", settings.uri, ", ".join(v.name for v in engine.voices()))
        if settings.zeroconf:
            advertisement = await advertise_server(settings, settings.zeroconf)
        signalled = asyncio.create_task(stopping.wait())
        await asyncio.wait([serving, signalled], return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            signalled.cancel()
            serving.result()
            return
        _LOGGER.info(
            "Stopping: no new connections; waiting up to %.0f s for audio in flight", settings.shutdown_grace
        )
        listener = getattr(server, "_server", None)
        if listener is not None:
            listener.close()
        if advertisement is not None:
            await advertisement.close()
            advertisement = None
        await drain(connections, settings.shutdown_grace)
        await server.stop()
    finally:
        serving.cancel()
        if watching is not None:
            watching.cancel()
        if advertisement is not None:
            await advertisement.close()


def stop_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (where the loop can take signal handlers)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stopping.set)
    return stopping


async def drain(connections: Connections, grace: float) -> None:
    """Wait until no connection has audio to send, or grace seconds."""
    deadline = asyncio.get_running_loop().time() + grace
    while (busy := connections.busy()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    if busy:
        _LOGGER.warning("Stopping with %d connections still speaking after %.0f s", len(busy), grace)


async def watch_voices(engine: Engine, inference: InferenceQueue, interval: float) -> None:
    """Look for changes in the voices directory every interval seconds, until cancelled.

    The look runs on the inference thread, between synthesis steps: a new clone
    prompt runs the model, and all torch work stays on that one thread.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            await inference.run(engine.reload_voices)
        except Exception:
            if inference.closed:  # shutting down
                return
            _LOGGER.exception("Reloading the voices failed; the voices stay as they were")


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


async def advertise_server(settings: Settings, name: str) -> Advertisement | None:
    """Advertise over zeroconf under name; on failure, warn and carry on without it."""
    from .wyoming.discovery import advertise  # zeroconf is imported only when used

    address = wyoming_address(settings.uri)
    if isinstance(address, str):  # settings.check refuses --zeroconf with a unix:// --uri already
        raise StartupError("--zeroconf needs a tcp:// --uri with a port")
    host, port = address
    try:
        return await advertise(name, port, host, settings.zeroconf_host)
    except (OSError, RuntimeError, ValueError) as err:
        _LOGGER.warning("Not advertising over zeroconf (%s); add the server by host and port instead", err)
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the server; return the process exit code."""
    try:
        settings = parse_settings(argv)
    except SettingsError as err:
        print(f"wyoming-qwen3tts: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if settings.debug else logging.INFO, format=settings.log_format)
    if not settings.debug:
        for noisy in ("transformers", "urllib3", "numba", "httpx", "filelock", "uvicorn.error"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(serve(settings))
    except (SettingsError, ModelError, EngineError, StartupError) as err:
        _LOGGER.debug("Start-up failed", exc_info=True)
        print(f"wyoming-qwen3tts: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

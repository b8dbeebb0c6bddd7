"""The speech API served by uvicorn inside the Wyoming server's own event loop, on --http-uri.

One loop means one worker thread: HTTP and Wyoming requests interleave step by step on it, and neither
protocol's describe or health check waits for the other's synthesis. The socket is bound here, before
uvicorn starts, so a taken port is one clear start-up error instead of uvicorn's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from ..settings import HttpOptions, SettingsError, http_address
from .app import ApiState, create_app

_LOGGER = logging.getLogger(__name__)


class HttpStartError(SettingsError):
    """The HTTP API cannot start; the message names the fix."""


async def start_http(options: HttpOptions, model_name: str, backend: str, grace: float) -> HttpServer:
    """The speech API on --http-uri, answering 503 until `state.ready()` is given the speech service."""
    state = ApiState(
        model_name,
        backend,
        api_key=options.api_key,
        max_requests=options.max_requests,
        trusted_peer=options.trusted_peer or None,
    )
    server = HttpServer(options.uri or "", state, grace=grace)
    await server.start()
    return server


class _Server(uvicorn.Server):
    """uvicorn that leaves signals alone: the Wyoming server's asyncio.run owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """The speech API listening on --http-uri until stop()."""

    def __init__(self, uri: str, state: ApiState, grace: float = 30.0) -> None:
        self.uri = uri
        self.state = state
        host, port = http_address(uri)
        try:
            self._socket = socket.create_server((host, port), reuse_port=False)
        except OSError as err:
            raise HttpStartError(
                f"--http-uri {uri}: cannot listen ({err.strerror or err}); choose a free port"
            ) from None
        self._socket.setblocking(False)
        config = uvicorn.Config(
            create_app(state),
            log_config=None,  # our logging.basicConfig stays in charge
            log_level="warning",
            lifespan="off",
            access_log=False,
            proxy_headers=False,  # the peer is the socket's: no header may claim --http-trusted-peer
            timeout_graceful_shutdown=max(1, round(grace)),  # in-flight responses may finish
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="qwen3tts http")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise HttpStartError(f"--http-uri {self.uri}: the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        _LOGGER.info("HTTP API at http://%s:%d (OpenAI-compatible, docs at /docs)", *http_address(self.uri))

    async def stop(self) -> None:
        if self._task is None:
            self._socket.close()
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, timeout=self._server.config.timeout_graceful_shutdown or 5)
        self._socket.close()

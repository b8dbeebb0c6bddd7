"""Every setting of the server in one place: one options dataclass per concern, composed into Settings.

A value comes from the command-line flag if given, else from the first of its environment variables
that is set, else from the default (flags.py). The groups, each a dataclass with its flags:

  engine     EngineOptions      the model, threads, voices, frame cap        engine/options.py
  torch      TorchOptions       dtype, attention, int8, --compile            engine/pytorch/options.py
  openvino   OpenVINOOptions    --ov-* and the inference precision           engine/openvino/options.py
  speech     SpeechSettings     what a request is spoken with by default     here
  wyoming    WyomingOptions     the Wyoming server                           here
  http       HttpOptions        the OpenAI-compatible HTTP API               here
  log        LogOptions         logging                                      here

Each backend's options (and which backends exist, for --backend) come from engine/registry.py; an engine
receives only its own groups. Nothing else in the package reads os.environ. Bad values stop the server
with one line that names the flag or variable and what would be accepted.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from . import __version__
from .engine.openvino.options import OpenVINOOptions
from .engine.options import ENGINE_FLAGS, EngineOptions
from .engine.pytorch.options import TorchOptions
from .engine.registry import BACKENDS, legacy_backend, option_groups
from .flags import Flag, FlagGroup, SettingsError, boolean, choice, positive_int, seconds

__all__ = [
    "EngineOptions",
    "HttpOptions",
    "LogOptions",
    "OpenVINOOptions",
    "Settings",
    "SettingsError",
    "SpeechSettings",
    "TorchOptions",
    "WyomingOptions",
    "build_parser",
    "check",
    "http_address",
    "parse_settings",
    "wyoming_address",
]

DEFAULT_URI = "tcp://0.0.0.0:10200"
DEFAULT_ZEROCONF_NAME = "qwen3-tts"
DEFAULT_BACKEND = "pytorch"


@dataclass(frozen=True)
class SpeechSettings:
    """What every request is spoken with unless it asks otherwise (service.SpeechOptions, once checked
    against the loaded model)."""

    voice: str | None = None  # None: the model's first voice
    language: str = "auto"
    normalize: bool = True  # numbers, dates, money, units and markup written out before synthesis
    max_text_chars: int = 5000
    max_batch: int = 4  # sentences advanced together in one batched step; 1: interleaved one by one
    look_ahead: int = 2  # later sentences of a request generated while the current one is spoken


@dataclass(frozen=True)
class WyomingOptions:
    """The Wyoming server: where it listens, how it is found, how many it serves and for how long."""

    uri: str = DEFAULT_URI
    zeroconf: str | None = None  # the name advertised over mDNS; None: not advertised
    zeroconf_host: str | None = None  # the address advertised; None: this host's own
    max_connections: int = 32  # open Wyoming connections; more get a busy error
    max_queued_sentences: int = 200  # sentences waiting on one connection; more get a busy error
    write_timeout: float = 30.0  # seconds; a client that stops reading is dropped (0: never)
    idle_timeout: float = 300.0  # seconds; a silent connection with nothing to say is closed (0: never)
    samples_per_chunk: int = 1024
    shutdown_grace: float = 30.0  # seconds SIGTERM/SIGINT wait for audio in flight before exiting


@dataclass(frozen=True)
class HttpOptions:
    """The OpenAI-compatible HTTP API, off unless --http-uri is given."""

    uri: str | None = None  # e.g. tcp://0.0.0.0:8880: also serve the OpenAI-compatible HTTP API
    api_key: str | None = None  # bearer token the HTTP API asks for; None: open
    max_requests: int = 4  # HTTP syntheses at once; more get 503 with Retry-After
    trusted_peer: str | None = None  # requests from this address need no key (Home Assistant's ingress)


@dataclass(frozen=True)
class LogOptions:
    """What the server logs, and how."""

    debug: bool = False
    format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s"


SPEECH_FLAGS = FlagGroup(
    "speech",
    "speech",
    SpeechSettings,
    (
        Flag("voice", ("QWEN3TTS_VOICE",), "default voice when a request names none"),
        Flag(
            "language",
            ("QWEN3TTS_LANGUAGE",),
            "default language when a request and its voice name none: auto, en, de, ... or english",
        ),
        Flag(
            "normalize",
            ("QWEN3TTS_NORMALIZE",),
            "write numbers, dates, money, units and markup out as words before synthesis",
            boolean,
            action=argparse.BooleanOptionalAction,
        ),
        Flag(
            "max_text_chars",
            ("QWEN3TTS_MAX_TEXT_CHARS",),
            "longest text accepted per request",
            positive_int,
            type=positive_int,
        ),
        Flag(
            "max_batch",
            ("QWEN3TTS_MAX_BATCH",),
            "sentences in flight (all clients, all requests) advanced together in one batched step, "
            "so one read of the weights speaks for all of them; 1 = one at a time, interleaved",
            positive_int,
            type=positive_int,
        ),
        Flag(
            "look_ahead",
            ("QWEN3TTS_LOOK_AHEAD",),
            "later sentences of a request generated (batched) while the current one is spoken; "
            "needs --max-batch above 1; 0 = none",
            positive_int,
            type=positive_int,
        ),
    ),
)

WYOMING_FLAGS = FlagGroup(
    "wyoming",
    "Wyoming server",
    WyomingOptions,
    (
        Flag("uri", ("QWEN3TTS_URI",), "where to listen, e.g. tcp://0.0.0.0:10200 or unix:///run/tts.sock"),
        Flag(
            "zeroconf",
            ("QWEN3TTS_ZEROCONF",),
            "advertise over zeroconf (mDNS) under this name",
            nargs="?",
            const=DEFAULT_ZEROCONF_NAME,
        ),
        Flag(
            "zeroconf_host",
            ("QWEN3TTS_ZEROCONF_HOST",),
            "address to advertise (default: this host's own address)",
        ),
        Flag(
            "max_connections",
            ("QWEN3TTS_MAX_CONNECTIONS",),
            "open Wyoming connections at most; 0 = no bound",
            positive_int,
            type=positive_int,
        ),
        Flag(
            "max_queued_sentences",
            ("QWEN3TTS_MAX_QUEUED_SENTENCES",),
            "sentences that may wait on one connection",
            positive_int,
            type=positive_int,
        ),
        Flag(
            "write_timeout",
            ("QWEN3TTS_WRITE_TIMEOUT",),
            "seconds before a client that stopped reading is dropped; 0 = never",
            seconds,
            type=seconds,
        ),
        Flag(
            "idle_timeout",
            ("QWEN3TTS_IDLE_TIMEOUT",),
            "seconds before a silent connection with nothing to say is closed; 0 = never",
            seconds,
            type=seconds,
        ),
        Flag(
            "samples_per_chunk",
            ("QWEN3TTS_SAMPLES_PER_CHUNK",),
            "samples per audio-chunk event",
            positive_int,
            type=positive_int,
        ),
        Flag(
            "shutdown_grace",
            ("QWEN3TTS_SHUTDOWN_GRACE",),
            "seconds SIGTERM/SIGINT let audio in flight finish before exiting",
            seconds,
            type=seconds,
        ),
    ),
)

HTTP_FLAGS = FlagGroup(
    "http",
    "HTTP API",
    HttpOptions,
    (
        Flag(
            "http_uri",
            ("QWEN3TTS_HTTP_URI",),
            "also serve the OpenAI-compatible HTTP API here, e.g. tcp://0.0.0.0:8880 (default: off)",
            field="uri",
        ),
        Flag(
            "http_api_key",
            ("QWEN3TTS_HTTP_API_KEY",),
            "bearer token the HTTP API requires (default: none, the API is open)",
            field="api_key",
        ),
        Flag(
            "http_max_requests",
            ("QWEN3TTS_HTTP_MAX_REQUESTS",),
            "HTTP syntheses at once; more are answered 503 with Retry-After",
            positive_int,
            field="max_requests",
            type=positive_int,
        ),
        Flag(
            "http_trusted_peer",
            ("QWEN3TTS_HTTP_TRUSTED_PEER",),
            "an IP address whose requests need no --http-api-key: a proxy that authenticates users itself, "
            "such as Home Assistant's ingress (172.30.32.2)",
            field="trusted_peer",
        ),
    ),
)

LOG_FLAGS = FlagGroup(
    "log",
    "logging",
    LogOptions,
    (
        Flag("debug", ("QWEN3TTS_DEBUG",), "log debug messages", boolean, action="store_const", const=True),
        Flag("log_format", ("QWEN3TTS_LOG_FORMAT",), "Python logging format", field="format"),
    ),
)

BACKEND_FLAG = Flag(
    "backend",
    ("QWEN3TTS_BACKEND", "TTS_BACKEND"),
    "inference backend",
    choice(tuple(BACKENDS)),
    choices=tuple(BACKENDS),
)


class _Flat:
    """settings.NAME as settings.GROUP.FIELD (FIELD defaults to NAME), read-only."""

    def __init__(self, group: str, field_name: str = "") -> None:
        self.group = group
        self.field_name = field_name

    def __set_name__(self, owner: type, name: str) -> None:
        self.field_name = self.field_name or name

    def __get__(self, settings: Any, owner: type | None = None) -> Any:
        if settings is None:
            return self
        return getattr(getattr(settings, self.group), self.field_name)


@dataclass(frozen=True)
class Settings:
    """The server's whole configuration, resolved from flags, environment and defaults, by concern."""

    backend: str = DEFAULT_BACKEND  # a name in engine/registry.py's BACKENDS
    engine: EngineOptions = field(default_factory=EngineOptions)
    torch: TorchOptions = field(default_factory=TorchOptions)  # the pytorch and ipex backends
    openvino: OpenVINOOptions = field(default_factory=OpenVINOOptions)  # the openvino backend
    speech: SpeechSettings = field(default_factory=SpeechSettings)
    wyoming: WyomingOptions = field(default_factory=WyomingOptions)
    http: HttpOptions = field(default_factory=HttpOptions)
    log: LogOptions = field(default_factory=LogOptions)

    # The flat names the front ends read today (settings.uri is settings.wyoming.uri), until they read
    # their own groups.
    model = _Flat("engine")
    warmup = _Flat("engine")
    voices_dir = _Flat("engine")
    voices_reload_interval = _Flat("engine")
    voice = _Flat("speech")
    language = _Flat("speech")
    normalize = _Flat("speech")
    max_text_chars = _Flat("speech")
    uri = _Flat("wyoming")
    zeroconf = _Flat("wyoming")
    zeroconf_host = _Flat("wyoming")
    max_connections = _Flat("wyoming")
    max_queued_sentences = _Flat("wyoming")
    write_timeout = _Flat("wyoming")
    idle_timeout = _Flat("wyoming")
    samples_per_chunk = _Flat("wyoming")
    shutdown_grace = _Flat("wyoming")
    http_uri = _Flat("http", "uri")
    http_api_key = _Flat("http", "api_key")
    http_max_requests = _Flat("http", "max_requests")
    http_trusted_peer = _Flat("http", "trusted_peer")
    debug = _Flat("log")
    log_format = _Flat("log", "format")


def flag_groups() -> list[FlagGroup]:
    """Every options group of Settings, in --help order: the engine's, each backend's, the server's."""
    return [ENGINE_FLAGS, *option_groups(), SPEECH_FLAGS, WYOMING_FLAGS, HTTP_FLAGS, LOG_FLAGS]


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag's help names its environment variables."""
    parser = argparse.ArgumentParser(
        prog="wyoming-qwen3tts",
        description="Wyoming text-to-speech server for Qwen3-TTS on the CPU.",
        epilog="Each flag can also be set by the environment variable(s) shown; the flag wins.",
    )
    BACKEND_FLAG.add_to(parser, DEFAULT_BACKEND)
    added = {BACKEND_FLAG.name}
    for group in flag_groups():
        group.add_to(parser, added)
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve flag > environment > default into a checked Settings."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    backend = BACKEND_FLAG.value(args, environ) or legacy_backend(environ) or DEFAULT_BACKEND
    groups = {group.name: group.resolve(args, environ) for group in flag_groups()}
    settings = Settings(backend=backend, **groups)
    check(settings)
    return settings


def check(settings: Settings) -> None:
    """Refuse settings that cannot work, naming the fix."""
    if settings.speech.max_batch == 0:
        raise SettingsError("--max-batch must be at least 1 (1: one sentence at a time)")
    backend = BACKENDS.get(settings.backend)
    if backend is None:
        raise SettingsError(
            f"backend {settings.backend!r} is not available yet in this version; "
            f"use --backend pytorch (and unset USE_IPEX / OV_MODEL_DIR)"
        )
    if problem := backend.problem():
        raise SettingsError(problem)
    engine, wyoming = settings.engine, settings.wyoming
    if engine.device.lower() != "cpu":
        raise SettingsError(
            f"device {engine.device!r} is not supported: this server runs on the CPU; use --device cpu"
        )
    wyoming_address(wyoming.uri)  # raises SettingsError naming the fix
    if wyoming.zeroconf and not wyoming.uri.startswith("tcp://"):
        raise SettingsError(
            f"--zeroconf advertises a TCP port, but --uri is {wyoming.uri}; "
            "use a tcp:// --uri or drop --zeroconf"
        )
    if settings.http.uri is not None:
        http_address(settings.http.uri)  # raises SettingsError naming the fix
    if settings.http.trusted_peer:
        try:
            ipaddress.ip_address(settings.http.trusted_peer)
        except ValueError:
            raise SettingsError(
                f"--http-trusted-peer {settings.http.trusted_peer!r} must be one IP address, e.g. 172.30.32.2"
            ) from None
    if wyoming.samples_per_chunk == 0:
        raise SettingsError("--samples-per-chunk must be at least 1")
    voices_dir = engine.voices_dir
    if voices_dir is not None and not voices_dir.is_dir():
        raise SettingsError(f"--voices-dir {voices_dir} is not a directory; create it or drop the flag")
    if voices_dir is not None and not os.access(voices_dir, os.R_OK | os.X_OK):
        raise SettingsError(f"--voices-dir {voices_dir} cannot be read by this user; fix its permissions")


def wyoming_address(uri: str) -> tuple[str, int] | str:
    """(host, port) of a tcp:// --uri, or the socket path of a unix:// one."""
    parsed = urlparse(uri)
    if parsed.scheme == "unix" and (parsed.netloc or parsed.path):
        return parsed.netloc + parsed.path
    if parsed.scheme == "stdio":
        raise SettingsError(
            "--uri stdio:// is not supported: audio still being synthesized when the input ends would be "
            "lost; use tcp://HOST:PORT or unix://PATH"
        )
    address = _tcp_address(uri)
    if address is None:
        raise SettingsError(f"--uri {uri!r} must look like tcp://0.0.0.0:10200 or unix:///run/qwen3tts.sock")
    return address


def http_address(uri: str) -> tuple[str, int]:
    """Host and port of --http-uri (tcp://HOST:PORT)."""
    address = _tcp_address(uri)
    if address is None:
        raise SettingsError(f"--http-uri {uri!r} must look like tcp://0.0.0.0:8880")
    return address


def _tcp_address(uri: str) -> tuple[str, int] | None:
    """(host, port) of tcp://HOST:PORT, or None if uri is not one."""
    parsed = urlparse(uri)
    try:
        port = parsed.port
    except ValueError:  # not a number, or out of range
        return None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None:
        return None
    return parsed.hostname, port

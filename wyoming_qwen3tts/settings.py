"""Every setting of the server in one place: flags, their environment variables, defaults, checks.

A value comes from the command-line flag if given, else from the first of its
environment variables that is set, else from the default. Nothing else in the
package reads os.environ. Bad values stop the server with one line that names
the flag or variable and what would be accepted.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import __version__
from .cpu import has_native_bf16

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
DEFAULT_URI = "tcp://0.0.0.0:10200"
DEFAULT_ZEROCONF_NAME = "qwen3-tts"
BACKENDS = ("pytorch", "ipex", "openvino")
AVAILABLE_BACKENDS = ("pytorch", "ipex", "openvino")
IPEX_TORCH = "2.8."  # intel-extension-for-pytorch 2.8.0, its last release, runs on torch 2.8.x only
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTIONS = ("sdpa", "eager")
QUANTIZE = ("auto", "none", "int8")
OV_WEIGHTS = ("fp32", "fp16", "int8", "int4")


class SettingsError(ValueError):
    """A setting that cannot work; the message names it and the fix."""


@dataclass(frozen=True)
class Settings:
    """The server's whole configuration, resolved from flags, environment and defaults."""

    uri: str = DEFAULT_URI
    model: str = DEFAULT_MODEL
    data_dir: Path = Path("data")
    backend: str = "pytorch"
    device: str = "cpu"
    dtype: str = "auto"
    attn: str = "sdpa"
    quantize: str = "auto"
    compile: bool = False  # torch.compile the float talker/predictor steps (engine/compiled_steps.py)
    threads: int = 0  # 0: one per physical performance core (cpu.default_threads)
    interop_threads: int = 1
    voice: str | None = None
    language: str = "auto"
    warmup: bool = True
    normalize: bool = True
    max_frames: int = 0  # 0: derived from the text length
    greedy: bool = False
    zeroconf: str | None = None
    zeroconf_host: str | None = None
    voices_dir: Path | None = None
    voices_reload_interval: float = 5.0  # seconds between looks at --voices-dir; 0: never
    samples_per_chunk: int = 1024
    max_text_chars: int = 5000
    ov_device: str = "CPU"
    ov_weights: str = "int8"  # weight format of an export made on first start
    ov_model_dir: Path | None = None
    ov_cache_dir: Path | None = None
    max_connections: int = 32  # open Wyoming connections; more get a busy error
    max_queued_sentences: int = 200  # sentences waiting on one connection; more get a busy error
    write_timeout: float = 30.0  # seconds; a client that stops reading is dropped (0: never)
    idle_timeout: float = 300.0  # seconds; a silent connection with nothing to say is closed (0: never)
    shutdown_grace: float = 30.0  # seconds SIGTERM/SIGINT wait for audio in flight before exiting
    http_uri: str | None = None  # e.g. tcp://0.0.0.0:8880: also serve the OpenAI-compatible HTTP API
    http_api_key: str | None = None  # bearer token the HTTP API asks for; None: open
    http_max_requests: int = 4  # HTTP syntheses at once; more get 503 with Retry-After
    debug: bool = False
    log_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s"

    def resolved_dtype(self, native_bf16: bool | None = None) -> str:
        """The dtype to load with: "auto" is bfloat16 where this CPU has native bf16, else float32."""
        if self.dtype != "auto":
            return self.dtype
        native = has_native_bf16() if native_bf16 is None else native_bf16
        return "bfloat16" if native else "float32"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise ValueError("must be a number of seconds, 0 or more")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text.lower()

    return parse


def _optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text else None


# field -> (environment variables, first wins; parser for their text)
ENVIRONMENT: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "uri": (("QWEN3TTS_URI",), str),
    "model": (("QWEN3TTS_MODEL", "TTS_MODEL_ID"), str),
    "data_dir": (("QWEN3TTS_DATA_DIR",), Path),
    "backend": (("QWEN3TTS_BACKEND", "TTS_BACKEND"), _choice(BACKENDS)),
    "device": (("QWEN3TTS_DEVICE", "TTS_DEVICE"), str),
    "dtype": (("QWEN3TTS_DTYPE", "TTS_DTYPE"), _choice(DTYPES)),
    "attn": (("QWEN3TTS_ATTN", "TTS_ATTN"), _choice(ATTENTIONS)),
    "quantize": (("QWEN3TTS_QUANTIZE", "TTS_QUANTIZE"), _choice(QUANTIZE)),
    "compile": (("QWEN3TTS_COMPILE",), _bool),
    "threads": (("QWEN3TTS_THREADS", "CPU_THREADS"), _positive_int),
    "interop_threads": (("QWEN3TTS_INTEROP_THREADS", "CPU_INTEROP"), _positive_int),
    "voice": (("QWEN3TTS_VOICE",), str),
    "language": (("QWEN3TTS_LANGUAGE",), str),
    "warmup": (("QWEN3TTS_WARMUP", "TTS_WARMUP_ON_START"), _bool),
    "normalize": (("QWEN3TTS_NORMALIZE",), _bool),
    "max_frames": (("QWEN3TTS_MAX_FRAMES",), _positive_int),
    "greedy": (("QWEN3TTS_GREEDY",), _bool),
    "zeroconf": (("QWEN3TTS_ZEROCONF",), str),
    "zeroconf_host": (("QWEN3TTS_ZEROCONF_HOST",), str),
    "voices_dir": (("QWEN3TTS_VOICES_DIR",), _optional_path),
    "voices_reload_interval": (("QWEN3TTS_VOICES_RELOAD_INTERVAL",), _seconds),
    "samples_per_chunk": (("QWEN3TTS_SAMPLES_PER_CHUNK",), _positive_int),
    "max_text_chars": (("QWEN3TTS_MAX_TEXT_CHARS",), _positive_int),
    "ov_device": (("QWEN3TTS_OV_DEVICE", "OV_DEVICE"), str),
    "ov_weights": (("QWEN3TTS_OV_WEIGHTS", "OV_WEIGHTS"), _choice(OV_WEIGHTS)),
    "ov_model_dir": (("QWEN3TTS_OV_MODEL_DIR", "OV_MODEL_DIR"), _optional_path),
    "ov_cache_dir": (("QWEN3TTS_OV_CACHE_DIR", "OV_CACHE_DIR"), _optional_path),
    "max_connections": (("QWEN3TTS_MAX_CONNECTIONS",), _positive_int),
    "max_queued_sentences": (("QWEN3TTS_MAX_QUEUED_SENTENCES",), _positive_int),
    "write_timeout": (("QWEN3TTS_WRITE_TIMEOUT",), _seconds),
    "idle_timeout": (("QWEN3TTS_IDLE_TIMEOUT",), _seconds),
    "shutdown_grace": (("QWEN3TTS_SHUTDOWN_GRACE",), _seconds),
    "http_uri": (("QWEN3TTS_HTTP_URI",), str),
    "http_api_key": (("QWEN3TTS_HTTP_API_KEY",), str),
    "http_max_requests": (("QWEN3TTS_HTTP_MAX_REQUESTS",), _positive_int),
    "debug": (("QWEN3TTS_DEBUG",), _bool),
    "log_format": (("QWEN3TTS_LOG_FORMAT",), str),
}


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag's help names its environment variables."""
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="wyoming-qwen3tts",
        description="Wyoming text-to-speech server for Qwen3-TTS on the CPU.",
        epilog="Each flag can also be set by the environment variable(s) shown; the flag wins.",
    )

    def add(name: str, help_text: str, **kwargs: Any) -> None:
        envs = ", ".join(ENVIRONMENT[name][0])
        default = getattr(defaults, name)
        shown = (
            "" if default in (None, "") else f"; default: {default}".replace("%", "%%")
        )  # argparse formats %
        parser.add_argument(
            _flag(name), dest=name, default=None, help=f"{help_text} [env: {envs}{shown}]", **kwargs
        )

    add("uri", "where to listen, e.g. tcp://0.0.0.0:10200 or unix:///run/tts.sock")
    add("model", "local model directory, or a model id looked up (and downloaded) in --data-dir")
    add("data_dir", "where model ids are looked for and downloaded to")
    add("backend", "inference backend", choices=BACKENDS)
    add("device", "torch device (only cpu is supported)")
    add(
        "dtype",
        "weights dtype; auto = bfloat16 where the CPU has native bf16, else float32. With --backend "
        "openvino: the precision OpenVINO computes in; auto = float32 on every CPU",
        choices=DTYPES,
    )
    add("attn", "attention implementation used while loading", choices=ATTENTIONS)
    add(
        "quantize",
        "int8 weights for the talker and code predictor; auto = int8 where this CPU has a fast int8 kernel",
        choices=QUANTIZE,
    )
    add(
        "compile",
        "torch.compile the talker's and code predictor's steps when their weights are float (--quantize "
        "none): measured ~5 %% faster in float32 on an AVX2 CPU, minutes of compiling at every start, "
        "needs a C++ compiler",
        action=argparse.BooleanOptionalAction,
    )
    add("threads", "torch intra-op threads; 0 = one per physical performance core", type=_positive_int)
    add("interop_threads", "torch inter-op threads", type=_positive_int)
    add("voice", "default voice when a request names none")
    add("language", "default language when a request and its voice name none: auto, en, de, ... or english")
    switch = argparse.BooleanOptionalAction
    add("warmup", "synthesize a short phrase at start so the first request is fast", action=switch)
    add(
        "normalize",
        "write numbers, dates, money, units and markup out as words before synthesis",
        action=switch,
    )
    add(
        "max_frames",
        "hard cap on frames (80 ms each) per sentence; 0 = derived from text length",
        type=_positive_int,
    )
    add(
        "greedy",
        "greedy decoding instead of sampling (deterministic, for tests)",
        type=_bool,
        nargs="?",
        const="1",
    )
    add("zeroconf", "advertise over zeroconf (mDNS) under this name", nargs="?", const=DEFAULT_ZEROCONF_NAME)
    add("zeroconf_host", "address to advertise (default: this host's own address)")
    add("voices_dir", "directory of voices: voices.json, or NAME.wav + NAME.txt (clone), NAME.json (options)")
    add(
        "voices_reload_interval",
        "seconds between looks for changes in --voices-dir (a stat of each file); 0 = never",
        type=_seconds,
    )
    add("samples_per_chunk", "samples per audio-chunk event", type=_positive_int)
    add("max_text_chars", "longest text accepted per request", type=_positive_int)
    add("ov_device", "OpenVINO device: CPU, GPU or AUTO (openvino backend)")
    add(
        "ov_weights",
        "weight format of the export made on first start when --ov-model-dir is not given (openvino backend)",
        choices=OV_WEIGHTS,
    )
    add(
        "ov_model_dir",
        "directory of an export made by wyoming-qwen3tts-export-openvino; default: exported into --data-dir "
        "on first start (openvino backend)",
    )
    add("ov_cache_dir", "OpenVINO compiled-model cache: later starts skip compilation (openvino backend)")
    add("max_connections", "open Wyoming connections at most; 0 = no bound", type=_positive_int)
    add("max_queued_sentences", "sentences that may wait on one connection", type=_positive_int)
    add("write_timeout", "seconds before a client that stopped reading is dropped; 0 = never", type=_seconds)
    add(
        "idle_timeout",
        "seconds before a silent connection with nothing to say is closed; 0 = never",
        type=_seconds,
    )
    add("shutdown_grace", "seconds SIGTERM/SIGINT let audio in flight finish before exiting", type=_seconds)
    add("http_uri", "also serve the OpenAI-compatible HTTP API here, e.g. tcp://0.0.0.0:8880 (default: off)")
    add("http_api_key", "bearer token the HTTP API requires (default: none, the API is open)")
    add(
        "http_max_requests",
        "HTTP syntheses at once; more are answered 503 with Retry-After",
        type=_positive_int,
    )
    add("debug", "log debug messages", action="store_const", const=True)
    add("log_format", "Python logging format")
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def _from_environment(name: str, environ: Mapping[str, str]) -> Any:
    names, parse = ENVIRONMENT[name]
    for env in names:
        if env in environ:
            try:
                return parse(environ[env])
            except ValueError as err:
                raise SettingsError(f"environment variable {env}={environ[env]!r}: {err}") from None
    return None


def _legacy_backend(environ: Mapping[str, str]) -> str | None:
    """USE_IPEX=1 and OV_MODEL_DIR choose a backend, as in other Qwen3-TTS CPU servers."""
    if _bool(environ.get("USE_IPEX", "0") or "0"):
        return "ipex"
    if environ.get("OV_MODEL_DIR"):
        return "openvino"
    return None


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve flag > environment > default into a checked Settings."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        value = getattr(args, f.name, None)
        if value is None:
            value = _from_environment(f.name, environ)
        if f.name == "backend" and value is None:
            try:
                value = _legacy_backend(environ)
            except ValueError as err:
                raise SettingsError(f"environment variable USE_IPEX: {err}") from None
        if value is not None:
            if f.name in ("data_dir",) and isinstance(value, str):
                value = Path(value)
            if f.name in ("voices_dir", "ov_model_dir", "ov_cache_dir") and isinstance(value, str):
                value = _optional_path(value)
            values[f.name] = value
    settings = Settings(**values)
    check(settings)
    return settings


def ipex_problem() -> str | None:
    """Why --backend ipex cannot run in this Python environment, or None if it can.

    Read from the installed packages' metadata, importing neither: IPEX 2.8.0
    beside another torch dies on import with an error of its own version check.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    try:
        version("intel-extension-for-pytorch")
    except PackageNotFoundError:
        return (
            f"backend 'ipex' needs intel-extension-for-pytorch, which runs only on torch {IPEX_TORCH}x "
            f"(this environment has torch {torch_version}): run script/setup --ipex once, "
            "then script/run --backend ipex (or use --backend pytorch)"
        )
    if not torch_version.startswith(IPEX_TORCH):
        return (
            f"backend 'ipex' needs torch {IPEX_TORCH}x, this environment has torch {torch_version}: "
            "run script/setup --ipex once, then script/run --backend ipex (or use --backend pytorch)"
        )
    return None


def check(settings: Settings) -> None:
    """Refuse settings that cannot work, naming the fix."""
    if settings.backend not in AVAILABLE_BACKENDS:
        raise SettingsError(
            f"backend {settings.backend!r} is not available yet in this version; "
            f"use --backend pytorch (and unset USE_IPEX / OV_MODEL_DIR)"
        )
    if settings.backend == "ipex" and (problem := ipex_problem()):
        raise SettingsError(problem)
    if settings.device.lower() != "cpu":
        raise SettingsError(
            f"device {settings.device!r} is not supported: this server runs on the CPU; use --device cpu"
        )
    wyoming_address(settings.uri)  # raises SettingsError naming the fix
    if settings.zeroconf and not settings.uri.startswith("tcp://"):
        raise SettingsError(
            f"--zeroconf advertises a TCP port, but --uri is {settings.uri}; "
            "use a tcp:// --uri or drop --zeroconf"
        )
    if settings.http_uri is not None:
        http_address(settings.http_uri)  # raises SettingsError naming the fix
    if settings.samples_per_chunk == 0:
        raise SettingsError("--samples-per-chunk must be at least 1")
    if settings.voices_dir is not None and not settings.voices_dir.is_dir():
        raise SettingsError(
            f"--voices-dir {settings.voices_dir} is not a directory; create it or drop the flag"
        )
    if settings.voices_dir is not None and not os.access(settings.voices_dir, os.R_OK | os.X_OK):
        raise SettingsError(
            f"--voices-dir {settings.voices_dir} cannot be read by this user; fix its permissions"
        )


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

"""Start of the Home Assistant add-on (addon/): the add-on's options -> the server's flags -> the server ->
a `wyoming` discovery to the Supervisor, so Home Assistant offers the integration by itself.

    python -m wyoming_qwen3tts.addon

1. Reads the options the Supervisor writes to /data/options.json and checks them; a bad one ends the
   start with one line naming the option and what it accepts, and exit code 2.
2. Downloads the chosen model into /data the first time, logging its progress every few seconds (the
   server itself would download it silently), and makes the HTTP API key: the user's, else one
   generated on the first start and kept in /data/http_api_key (mode 0600).
3. Runs the server as a child process with the flags of `server_command` (the key goes by environment,
   not on the command line) and passes SIGTERM/SIGINT on to it; the add-on exits with its exit code.
4. Once the Wyoming port answers `describe`, POSTs {"service": "wyoming", "config": {"uri":
   "tcp://<hostname>:10200"}} to the Supervisor's /discovery with the SUPERVISOR_TOKEN; Home
   Assistant's Wyoming integration connects to that host and port. Without a token (not under the
   Supervisor) the discovery is skipped with a log line.

For tests, environment variables move what the add-on otherwise takes from its container:
QWEN3TTS_ADDON_OPTIONS (default /data/options.json), QWEN3TTS_ADDON_DATA (/data), SUPERVISOR_URL
(http://supervisor), QWEN3TTS_ADDON_WYOMING_PORT (10200), QWEN3TTS_ADDON_HTTP_PORT (8880, the ingress
port in addon/config.yaml), QWEN3TTS_ADDON_INGRESS_PEER (172.30.32.2, the ingress proxy). The child
server also reads the usual QWEN3TTS_* variables for anything the add-on does not set.

Nothing here imports torch; the model download uses huggingface_hub, as the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger("wyoming_qwen3tts.addon")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_BAD_OPTIONS = 2

# What the add-on's container provides; the environment variables exist for tests.
OPTIONS_ENV, DEFAULT_OPTIONS = "QWEN3TTS_ADDON_OPTIONS", "/data/options.json"
DATA_ENV, DEFAULT_DATA = "QWEN3TTS_ADDON_DATA", "/data"
SUPERVISOR_ENV, DEFAULT_SUPERVISOR = "SUPERVISOR_URL", "http://supervisor"
WYOMING_PORT_ENV, WYOMING_PORT = "QWEN3TTS_ADDON_WYOMING_PORT", 10200
HTTP_PORT_ENV, HTTP_PORT = "QWEN3TTS_ADDON_HTTP_PORT", 8880  # addon/config.yaml's ingress_port
TOKEN_ENV = "SUPERVISOR_TOKEN"
# s6-overlay (the Home Assistant base image's init) keeps the container's environment here; a CMD started
# with a cleared environment still finds the token in it.
S6_TOKEN_FILE = Path("/run/s6/container_environment") / TOKEN_ENV
# The Supervisor's ingress proxy: the page through ingress needs no key (--http-trusted-peer).
INGRESS_PEER_ENV, INGRESS_PEER = "QWEN3TTS_ADDON_INGRESS_PEER", "172.30.32.2"
KEY_FILE = "http_api_key"
SHUTDOWN_GRACE = "5"  # seconds for audio in flight on stop, within the Supervisor's 10 s stop timeout

# The 12 Hz checkpoints published by Qwen (there is no 0.6B VoiceDesign).
MODELS = (
    "Qwen3-TTS-12Hz-0.6B-CustomVoice",
    "Qwen3-TTS-12Hz-0.6B-Base",
    "Qwen3-TTS-12Hz-1.7B-CustomVoice",
    "Qwen3-TTS-12Hz-1.7B-Base",
    "Qwen3-TTS-12Hz-1.7B-VoiceDesign",
)
MODEL_ORG = "Qwen"
LANGUAGES = ("auto", "en", "zh", "ja", "ko", "de", "fr", "ru", "pt", "es", "it")
BACKENDS = ("pytorch", "openvino")  # ipex needs a Python environment of its own, not in the image
PRECISIONS = ("auto", "int8", "int4", "float32", "bfloat16")
LOG_LEVELS = ("info", "debug")

# precision -> the server flags that give it, per backend; a missing pair is refused with the fix.
PRECISION_FLAGS: dict[tuple[str, str], list[str]] = {
    ("pytorch", "auto"): [],
    ("pytorch", "int8"): ["--quantize", "int8"],
    ("pytorch", "float32"): ["--quantize", "none", "--dtype", "float32"],
    ("pytorch", "bfloat16"): ["--quantize", "none", "--dtype", "bfloat16"],
    ("openvino", "auto"): [],
    ("openvino", "int8"): ["--ov-weights", "int8"],
    ("openvino", "int4"): ["--ov-weights", "int4"],
    ("openvino", "float32"): ["--ov-weights", "fp32"],
}


class OptionsError(Exception):
    """An option the add-on cannot start with; the message names it and what it accepts."""


@dataclass(frozen=True)
class AddonOptions:
    """The add-on's options (addon/config.yaml's `options` and `schema`), checked."""

    model: str = MODELS[0]
    voice: str | None = None
    language: str = "auto"
    backend: str = "pytorch"
    precision: str = "auto"
    threads: int = 0  # 0: the server's choice, one per physical performance core
    http_api: bool = False
    http_api_key: str | None = None
    log_level: str = "info"

    @property
    def model_id(self) -> str:
        return f"{MODEL_ORG}/{self.model}"


def _choice(options: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = options.get(name, default)
    if value not in choices:
        raise OptionsError(f"option {name!r} is {value!r}; choose one of: {', '.join(choices)}")
    return str(value)


def _optional_text(options: Mapping[str, Any], name: str) -> str | None:
    value = options.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise OptionsError(f"option {name!r} must be text without leading or trailing spaces, or empty")
    return value


def parse_options(options: Any) -> AddonOptions:
    """The checked options from the parsed options.json; unknown keys (left by an older version) are
    logged and ignored, missing ones take their defaults."""
    if not isinstance(options, dict):
        raise OptionsError(f"the options must be a JSON object, not {type(options).__name__}")
    known = set(AddonOptions.__dataclass_fields__)
    for name in sorted(set(options) - known):
        _LOGGER.warning("Ignoring unknown option %r (from another version of the add-on?)", name)
    defaults = AddonOptions()
    threads = options.get("threads", defaults.threads)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise OptionsError(f"option 'threads' is {threads!r}; use a whole number, 0 for automatic")
    http_api = options.get("http_api", defaults.http_api)
    if not isinstance(http_api, bool):
        raise OptionsError(f"option 'http_api' is {http_api!r}; use true or false")
    parsed = AddonOptions(
        model=_choice(options, "model", MODELS, defaults.model),
        voice=_optional_text(options, "voice"),
        language=_choice(options, "language", LANGUAGES, defaults.language),
        backend=_choice(options, "backend", BACKENDS, defaults.backend),
        precision=_choice(options, "precision", PRECISIONS, defaults.precision),
        threads=threads,
        http_api=http_api,
        http_api_key=_optional_text(options, "http_api_key"),
        log_level=_choice(options, "log_level", LOG_LEVELS, defaults.log_level),
    )
    if (parsed.backend, parsed.precision) not in PRECISION_FLAGS:
        fits = [precision for backend, precision in PRECISION_FLAGS if backend == parsed.backend]
        raise OptionsError(
            f"precision {parsed.precision!r} does not exist on the {parsed.backend} backend; "
            f"choose one of: {', '.join(fits)}"
        )
    return parsed


def read_options(path: Path) -> AddonOptions:
    """options.json, checked."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionsError(
            f"{path} does not exist (the Supervisor writes it when the add-on starts)"
        ) from None
    except (OSError, ValueError) as err:
        raise OptionsError(f"{path} is not readable JSON ({err})") from None
    return parse_options(raw)


def api_key(options: AddonOptions, data_dir: Path) -> tuple[str, bool]:
    """The HTTP API key and whether it is the generated one: the user's option, else the one kept in
    data_dir (made with `secrets` on the first start, readable only by its owner)."""
    if options.http_api_key:
        return options.http_api_key, False
    path = data_dir / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        stored = path.read_text(encoding="utf-8").strip()
        if stored:
            return stored, True
    key = secrets.token_urlsafe(32)
    temporary = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    os.replace(temporary, path)
    _LOGGER.info("Generated an HTTP API key, kept in %s", path)
    return key, True


def server_command(
    options: AddonOptions,
    data_dir: Path,
    wyoming_port: int,
    http_port: int,
    trusted_peer: str = INGRESS_PEER,
) -> list[str]:
    """The server's command line for these options (the HTTP API key goes by environment)."""
    command = [
        sys.executable,
        "-m",
        "wyoming_qwen3tts",
        "--uri",
        f"tcp://0.0.0.0:{wyoming_port}",
        "--model",
        options.model_id,
        "--data-dir",
        str(data_dir),
        "--voices-dir",
        str(data_dir / "voices"),
        "--language",
        options.language,
        "--backend",
        options.backend,
        *PRECISION_FLAGS[options.backend, options.precision],
        "--threads",
        str(options.threads),
        "--http-uri",
        f"tcp://0.0.0.0:{http_port}",
        "--http-trusted-peer",
        trusted_peer,
        "--shutdown-grace",
        SHUTDOWN_GRACE,
    ]
    if options.voice:
        command += ["--voice", options.voice]
    if options.backend == "openvino":
        command += ["--ov-cache-dir", str(data_dir / "openvino" / "cache")]
    if options.log_level == "debug":
        command.append("--debug")
    return command


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _repo_bytes(model_id: str) -> int | None:
    """The model's size on the hub, or None where the hub does not say."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(model_id, files_metadata=True, timeout=20)
        sizes = [sibling.size for sibling in info.siblings or () if sibling.size]
        return sum(sizes) or None
    except Exception:  # offline, rate-limited, an older hub client: only the percentage is lost
        return None


def _hub_download(model_id: str, target: Path) -> object:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=model_id, local_dir=str(target))


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def model_present(local: Path) -> bool:
    """The model folder has its config and weights (a backup restored without its *.safetensors,
    which addon/config.yaml leaves out of backups, has not)."""
    return (
        (local / "config.json").is_file()
        and any(local.glob("*.safetensors"))
        and any((local / "speech_tokenizer").glob("*.safetensors"))
    )


def ensure_model(
    model_id: str,
    data_dir: Path,
    interval: float = 10.0,
    download: Callable[[str, Path], object] | None = None,
) -> None:
    """Download the model into data_dir (to the folder the server looks in) unless it is there, with a
    progress line every `interval` seconds; a failure raises RuntimeError naming the fix."""
    local = data_dir / model_id.split("/")[-1]
    if model_present(local):
        return
    download = download or _hub_download
    total = _repo_bytes(model_id)
    _LOGGER.info(
        "First start with %s: downloading it to %s (%s; once, it stays in /data across updates)",
        model_id,
        local,
        _gb(total) if total else "size unknown",
    )
    done = threading.Event()

    def report() -> None:
        started = time.monotonic()
        while not done.wait(interval):
            have = _tree_bytes(local)
            rate = have / max(time.monotonic() - started, 1e-6) / 1e6
            share = f" of {_gb(total)} ({min(100, 100 * have // total)} %)" if total else ""
            _LOGGER.info("Downloading %s: %s%s, %.1f MB/s", model_id, _gb(have), share, rate)

    reporter = threading.Thread(target=report, name="download-progress", daemon=True)
    reporter.start()
    started = time.monotonic()
    try:
        download(model_id, local)
    except Exception as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise RuntimeError(
            f"could not download {model_id} to {local} ({reason}); check the internet connection of "
            "Home Assistant and restart the add-on"
        ) from None
    finally:
        done.set()
        reporter.join()
    _LOGGER.info("Downloaded %s: %s in %.0f s", model_id, _gb(_tree_bytes(local)), time.monotonic() - started)


def supervisor_token(environ: Mapping[str, str]) -> str | None:
    token = environ.get(TOKEN_ENV)
    if not token:
        with contextlib.suppress(OSError):
            token = S6_TOKEN_FILE.read_text(encoding="utf-8").strip()
    return token or None


def _supervisor_call(
    base: str, path: str, token: str, body: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """A Supervisor API call; its JSON answer (raises OSError or ValueError on failure)."""
    request = urllib.request.Request(
        base.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read() or b"{}")
    if not isinstance(answer, dict) or answer.get("result", "ok") != "ok":
        raise ValueError(f"the Supervisor answered {answer!r}")
    return answer


def discovery_config(wyoming_port: int, hostname: str | None = None) -> dict[str, Any]:
    """What the Wyoming integration reads from the discovery: it parses config["uri"] and connects to its
    host and port. The add-on's hostname resolves on the Supervisor's internal network."""
    return {"uri": f"tcp://{hostname or socket.gethostname()}:{wyoming_port}"}


def wait_until_describes(port: int, alive: Callable[[], bool], poll: float = 1.0) -> bool:
    """Wait until the server on this port answers describe; False if it ended first."""
    from .wyoming.health import HealthError, check

    uri = f"tcp://127.0.0.1:{port}"
    while alive():
        try:
            asyncio.run(check(uri, 5.0))
            return True
        except (HealthError, OSError, ValueError):  # not listening yet, or a half-started server
            time.sleep(poll)
    return False


def announce(base: str, token: str | None, config: dict[str, Any], attempts: int = 5) -> bool:
    """POST the wyoming discovery to the Supervisor; log how it went."""
    if token is None:
        _LOGGER.info(
            "No %s (not running under the Home Assistant Supervisor): skipping the discovery; add "
            "the Wyoming integration by hand with this host and port %s",
            TOKEN_ENV,
            config["uri"].rsplit(":", 1)[-1],
        )
        return False
    for attempt in range(1, attempts + 1):
        try:
            _supervisor_call(base, "/discovery", token, {"service": "wyoming", "config": config})
        except (OSError, ValueError) as err:
            _LOGGER.warning(
                "Discovery to the Supervisor failed (attempt %d of %d): %s", attempt, attempts, err
            )
            if attempt < attempts:
                time.sleep(min(2**attempt, 30))
            continue
        _LOGGER.info(
            "Announced %s to Home Assistant: unless it is set up already, Settings > Devices & services "
            "offers the Wyoming integration for it under Discovered",
            config["uri"],
        )
        return True
    _LOGGER.error("Could not announce the server to Home Assistant; add the Wyoming integration by hand")
    return False


def log_http_reach(
    base: str, token: str | None, options: AddonOptions, http_port: int, generated: bool
) -> None:
    """Say where the HTTP API can be reached, from the host port set in the Network section."""
    host_port: Any = None
    if token is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            info = _supervisor_call(base, "/addons/self/info", token, timeout=5).get("data", {})
            host_port = (info.get("network") or {}).get(f"{http_port}/tcp")
    if not options.http_api:
        _LOGGER.info(
            "HTTP API off: the voice studio page opens through ingress only (Open Web UI)%s",
            f"; host port {host_port} answers 401 to everything else" if host_port else "",
        )
        return
    where = f"host port {host_port}" if host_port else "no host port yet (set one in the Network section)"
    key = "the key from the http_api_key option" if not generated else "the generated key below"
    _LOGGER.info("HTTP API on: %s, with %s", where, key)


def run(environ: Mapping[str, str] | None = None) -> int:
    """The add-on's start; the exit code."""
    environ = os.environ if environ is None else environ
    options_path = Path(environ.get(OPTIONS_ENV, DEFAULT_OPTIONS))
    data_dir = Path(environ.get(DATA_ENV, DEFAULT_DATA))
    supervisor = environ.get(SUPERVISOR_ENV, DEFAULT_SUPERVISOR)
    try:
        wyoming_port = int(environ.get(WYOMING_PORT_ENV, WYOMING_PORT))
        http_port = int(environ.get(HTTP_PORT_ENV, HTTP_PORT))
        options = read_options(options_path)
    except (OptionsError, ValueError) as err:
        _LOGGER.error("Cannot start: %s", err)
        return EXIT_BAD_OPTIONS
    if options.log_level == "debug":
        logging.getLogger().setLevel(logging.DEBUG)
    _LOGGER.info(
        "Starting %s (voice %s, language %s, backend %s, precision %s, threads %s, HTTP API %s)",
        options.model_id,
        options.voice or "the model's first",
        options.language,
        options.backend,
        options.precision,
        options.threads or "auto",
        "on" if options.http_api else "off (ingress only)",
    )
    token = supervisor_token(environ)
    try:
        (data_dir / "voices").mkdir(parents=True, exist_ok=True)
        key, generated = api_key(options, data_dir)
        ensure_model(options.model_id, data_dir)
    except (OSError, RuntimeError) as err:
        _LOGGER.error("Cannot start: %s", err)
        return 1
    log_http_reach(supervisor, token, options, http_port, generated)
    if options.http_api and generated:
        _LOGGER.info("HTTP API key (Authorization: Bearer ...): %s", key)
    # With the HTTP API off, the server gets a key nobody knows: only the ingress proxy (the trusted
    # peer) is served, even if a host port is mapped. The stored key stays for when it is turned on.
    server_key = key if options.http_api else secrets.token_urlsafe(32)
    child_env = {name: value for name, value in environ.items() if name != TOKEN_ENV}
    child_env["QWEN3TTS_HTTP_API_KEY"] = server_key
    command = server_command(
        options, data_dir, wyoming_port, http_port, environ.get(INGRESS_PEER_ENV, INGRESS_PEER)
    )
    _LOGGER.debug("Server command: %s", " ".join(command))
    server = subprocess.Popen(command, env=child_env)

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)

    def discover() -> None:
        if wait_until_describes(wyoming_port, lambda: server.poll() is None):
            announce(supervisor, token, discovery_config(wyoming_port))

    threading.Thread(target=discover, name="discovery", daemon=True).start()
    code = server.wait()
    if code != 0:
        _LOGGER.error("The server ended with exit code %s", code)
    return 128 - code if code < 0 else code


def main() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    sys.exit(run())


if __name__ == "__main__":
    main()

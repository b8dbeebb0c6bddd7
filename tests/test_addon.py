"""The Home Assistant add-on: its files against the documented add-on schema, and its start
(wyoming_qwen3tts/addon.py) with a sample options.json, a tiny model and a stand-in Supervisor.

The image build is script/test-addon-image (buildah; too heavy for CI)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from conftest import free_port
from wyoming.audio import AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from wyoming_qwen3tts import __version__, addon

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- the add-on's files against https://developers.home-assistant.io/docs/apps/configuration ---------

REQUIRED = {"name": str, "version": str, "slug": str, "description": str, "arch": list}
ARCHES = {"aarch64", "amd64"}
# The optional keys this add-on may use, with their documented types or values.
OPTIONAL: dict[str, Any] = {
    "url": str,
    "startup": ("initialize", "system", "services", "application", "once"),
    "boot": ("auto", "manual", "manual_only"),
    "init": bool,
    "discovery": list,
    "ingress": bool,
    "ingress_port": int,
    "ingress_entry": str,
    "panel_icon": str,
    "panel_title": str,
    "panel_admin": bool,
    "ports": dict,
    "ports_description": dict,
    "map": list,
    "hassio_api": bool,
    "homeassistant_api": bool,
    "watchdog": str,
    "timeout": int,
    "backup_exclude": list,
    "stage": ("stable", "experimental", "deprecated"),
    "image": str,
    "options": dict,
    "schema": dict,
}
SCHEMA_TYPES = [
    r"str(\(\d*,\d*\))?",
    r"int(\(-?\d*,-?\d*\))?",
    r"float(\([-.\d]*,[-.\d]*\))?",
    r"bool",
    r"email",
    r"url",
    r"password",
    r"port",
    r"match\(.+\)",
    r"list\([^|()]+(\|[^|()]+)*\)",
    r"device(\(.+\))?",
]


def schema_problem(kind: str, value: Any) -> str | None:
    """Why a default does not fit its schema type (for the types this add-on uses), or None."""
    kind = kind.rstrip("?")
    if kind.startswith("list("):
        choices = kind[5:-1].split("|")
        return None if value in choices else f"{value!r} not in {choices}"
    if kind.startswith("int"):
        low, _, high = kind[4:-1].partition(",") if "(" in kind else ("", "", "")
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (not low or value >= int(low)) and (not high or value <= int(high))
        return None if ok else f"{value!r} is not {kind}"
    if kind == "bool":
        return None if isinstance(value, bool) else f"{value!r} is not bool"
    if kind in ("str", "password"):
        return None if isinstance(value, str) else f"{value!r} is not text"
    return None


def test_config_yaml_follows_the_documented_schema():
    config = load_yaml(ADDON / "config.yaml")
    for key, kind in REQUIRED.items():
        assert isinstance(config.get(key), kind), f"required key {key} missing or not {kind.__name__}"
    unknown = set(config) - set(REQUIRED) - set(OPTIONAL)
    assert not unknown, f"keys the add-on documentation does not have: {unknown}"
    for key, kind in OPTIONAL.items():
        if key in config:
            if isinstance(kind, tuple):
                assert config[key] in kind, f"{key}: {config[key]!r} not one of {kind}"
            else:
                assert isinstance(config[key], kind) and not (kind is int and isinstance(config[key], bool))
    assert re.fullmatch(r"[a-z0-9_]+", config["slug"])
    assert config["version"] == __version__  # setup.cfg's version is this attribute
    assert config["name"] == "Qwen3-TTS (Wyoming)"
    assert set(config["arch"]) <= ARCHES and config["arch"] == ["amd64"]
    assert config["discovery"] == ["wyoming"] and config["init"] is False and config["ingress"] is True

    for port, host_port in config["ports"].items():
        assert re.fullmatch(r"\d{1,5}/(tcp|udp)", port)
        assert host_port is None or (isinstance(host_port, int) and 0 < host_port < 65536)
    container_ports = {int(port.split("/")[0]) for port in config["ports"]}
    assert {addon.WYOMING_PORT, addon.HTTP_PORT} == container_ports
    assert config["ingress_port"] == addon.HTTP_PORT  # the page is served by the HTTP API's port
    assert config["ports"][f"{addon.HTTP_PORT}/tcp"] is None  # not on the host unless the user sets it

    options, schema = config["options"], config["schema"]
    assert set(options) <= set(schema), "every option needs a schema entry"
    for key, kind in schema.items():
        assert isinstance(kind, str) and any(
            re.fullmatch(pattern + r"\??", kind) for pattern in SCHEMA_TYPES
        ), f"{key}: {kind!r} is not a documented schema type"
        if kind.endswith("?"):
            assert key not in options, f"{key} is optional ({kind}): it must have no default"
        else:
            assert key in options, f"{key} is required ({kind}) but has no default"
            assert schema_problem(kind, options[key]) is None, (key, schema_problem(kind, options[key]))


def test_the_schema_offers_what_the_start_accepts():
    schema = load_yaml(ADDON / "config.yaml")["schema"]

    def choices(key: str) -> tuple[str, ...]:
        return tuple(schema[key][5:-1].split("|"))

    assert choices("model") == addon.MODELS
    assert choices("language") == addon.LANGUAGES
    assert choices("backend") == addon.BACKENDS
    assert choices("precision") == addon.PRECISIONS
    assert choices("log_level") == addon.LOG_LEVELS
    assert set(schema) == set(addon.AddonOptions.__dataclass_fields__)
    # The defaults of config.yaml are the start's defaults.
    assert addon.parse_options(load_yaml(ADDON / "config.yaml")["options"]) == addon.AddonOptions()


def test_build_files_repository_and_translations():
    config = load_yaml(ADDON / "config.yaml")
    build = load_yaml(ADDON / "build.yaml")
    assert set(build) <= {"build_from", "args", "labels", "squash", "codenotary"}
    assert set(build["build_from"]) == set(config["arch"])
    dockerfile = (ADDON / "Dockerfile").read_text(encoding="utf-8")
    # The Dockerfile's default base is build.yaml's (newer Supervisors no longer read build.yaml).
    assert f"ARG BUILD_FROM={build['build_from']['amd64']}\nFROM ${{BUILD_FROM}}" in dockerfile
    assert "ARG QWEN3TTS_SOURCE=" in dockerfile and "ARG TORCH_SPEC=" in dockerfile
    assert re.search(r"^CMD \[.*\"-m\", \"wyoming_qwen3tts\.addon\"\]$", dockerfile, re.M)

    repository = load_yaml(ROOT / "repository.yaml")
    assert set(repository) == {"name", "url", "maintainer"}
    assert config["url"].startswith(repository["url"] + "/")
    assert f'"{repository["url"]}/archive/refs/tags/v${{BUILD_VERSION}}.tar.gz"' in dockerfile

    translations = load_yaml(ADDON / "translations" / "en.yaml")
    assert set(translations) <= {"configuration", "network"}
    assert set(translations["configuration"]) == set(config["schema"])
    assert all({"name", "description"} <= set(entry) for entry in translations["configuration"].values())
    assert set(translations["network"]) == set(config["ports"])
    for name in ("DOCS.md", "CHANGELOG.md"):
        assert (ADDON / name).is_file()
    assert f"## {config['version']}" in (ADDON / "CHANGELOG.md").read_text(encoding="utf-8")


# --- options -> flags ----------------------------------------------------------------------------


def test_options_map_to_server_flags(tmp_path):
    options = addon.parse_options(
        {"model": "Qwen3-TTS-12Hz-1.7B-Base", "voice": "anna", "language": "de", "backend": "openvino"}
        | {"precision": "int4", "threads": 3, "http_api": True, "log_level": "debug"}
    )
    command = addon.server_command(options, tmp_path, 10200, 8880)
    assert command[:3] == [sys.executable, "-m", "wyoming_qwen3tts"]
    flags = " ".join(command[3:])
    for expected in (
        "--uri tcp://0.0.0.0:10200",
        "--model Qwen/Qwen3-TTS-12Hz-1.7B-Base",
        f"--data-dir {tmp_path}",
        f"--voices-dir {tmp_path / 'voices'}",
        "--language de",
        "--backend openvino",
        "--ov-weights int4",
        "--threads 3",
        "--http-uri tcp://0.0.0.0:8880",
        "--voice anna",
        f"--ov-cache-dir {tmp_path / 'openvino' / 'cache'}",
        "--http-trusted-peer 172.30.32.2",
        "--debug",
    ):
        assert expected in flags
    assert "--http-api-key" not in flags  # the key goes by environment, not on the command line
    # pytorch: precision is --quantize / --dtype; nothing optional is added for the defaults.
    default = " ".join(addon.server_command(addon.AddonOptions(), tmp_path, 1, 2))
    assert "--voice " not in default and "--debug" not in default and "--ov-" not in default
    float32 = addon.parse_options({"precision": "float32"})
    assert "--quantize none --dtype float32" in " ".join(addon.server_command(float32, tmp_path, 1, 2))
    # Every mapped command line is one the server accepts.
    from wyoming_qwen3tts.settings import build_parser

    known = {o for action in build_parser()._actions for o in action.option_strings}
    for (backend, precision), extra in addon.PRECISION_FLAGS.items():
        assert all(flag in known for flag in extra if flag.startswith("--")), (backend, precision)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"backend": "cuda"}, "option 'backend' is 'cuda'; choose one of: pytorch, openvino"),
        ({"model": "Qwen3-TTS-12Hz-0.6B-VoiceDesign"}, "option 'model'"),
        ({"threads": -1}, "option 'threads'"),
        ({"threads": True}, "option 'threads'"),
        ({"http_api": "yes"}, "option 'http_api'"),
        ({"voice": " ryan"}, "option 'voice'"),
        ({"precision": "int4"}, "precision 'int4' does not exist on the pytorch backend"),
        ({"backend": "openvino", "precision": "bfloat16"}, "choose one of: auto, int8, int4, float32"),
        ([], "must be a JSON object"),
    ],
)
def test_bad_options_are_named(options, named):
    with pytest.raises(addon.OptionsError, match=re.escape(named)):
        addon.parse_options(options)


def test_unknown_options_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        parsed = addon.parse_options({"voice": "", "old_option": 1})
    assert parsed == addon.AddonOptions()
    assert "Ignoring unknown option 'old_option'" in caplog.text


def test_the_api_key_is_generated_once_and_kept_private(tmp_path):
    key, generated = addon.api_key(addon.AddonOptions(), tmp_path)
    path = tmp_path / addon.KEY_FILE
    assert generated and len(key) >= 40 and path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert addon.api_key(addon.AddonOptions(), tmp_path) == (key, True)  # a second start reuses it
    assert addon.api_key(addon.AddonOptions(http_api_key="mine-1234"), tmp_path) == ("mine-1234", False)
    assert path.read_text().strip() == key  # the user's key does not replace the stored one


def test_first_download_logs_its_progress(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(addon, "_repo_bytes", lambda model_id: 3_000_000)

    def slow_download(model_id: str, target: Path) -> None:
        (target / "speech_tokenizer").mkdir(parents=True)
        for part in range(3):
            (target / f"model-{part}.safetensors").write_bytes(b"\0" * 1_000_000)
            time.sleep(0.15)
        (target / "speech_tokenizer" / "model.safetensors").write_bytes(b"\0")
        (target / "config.json").write_text("{}")

    with caplog.at_level(logging.INFO):
        addon.ensure_model("Qwen/Tiny", tmp_path, interval=0.05, download=slow_download)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("First start with Qwen/Tiny: downloading it to") and "0.00 GB" in lines[0]
    assert any(re.match(r"Downloading Qwen/Tiny: 0\.00 GB of 0\.00 GB \(\d+ %\)", line) for line in lines)
    assert lines[-1].startswith("Downloaded Qwen/Tiny")
    caplog.clear()
    addon.ensure_model("Qwen/Tiny", tmp_path, download=slow_download)  # there now: nothing to do
    assert not caplog.records

    def offline(model_id: str, target: Path) -> None:
        raise OSError("Name or service not known")

    with pytest.raises(RuntimeError, match="could not download Qwen/Other .*Name or service not known"):
        addon.ensure_model("Qwen/Other", tmp_path, interval=10, download=offline)


def test_without_a_supervisor_token_the_discovery_is_skipped(caplog):
    with caplog.at_level(logging.INFO):
        assert addon.announce("http://127.0.0.1:9", None, {"uri": "tcp://host:10200"}) is False
    assert "skipping the discovery" in caplog.text and "port 10200" in caplog.text


# --- the start, end to end -------------------------------------------------------------------------


class StandInSupervisor:
    """The Supervisor's API as far as the add-on uses it: POST /discovery, GET /addons/self/info."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.received = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self.answer({"result": "ok", "data": {"network": {"8880/tcp": None, "10200/tcp": None}}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.posts.append(
                    {"path": self.path, "authorization": self.headers.get("Authorization"), "body": body}
                )
                stand_in.received.set()
                self.answer({"result": "ok", "data": {"uuid": "abc"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def supervisor() -> Iterator[StandInSupervisor]:
    stand_in = StandInSupervisor()
    yield stand_in
    stand_in.close()


def addon_env(data: Path, supervisor_url: str, wyoming_port: int, http_port: int) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("QWEN3TTS_", "TTS_", "SUPERVISOR_"))
        and name not in ("OV_MODEL_DIR", "USE_IPEX")
    }
    return env | {
        addon.OPTIONS_ENV: str(data / "options.json"),
        addon.DATA_ENV: str(data),
        addon.SUPERVISOR_ENV: supervisor_url,
        addon.WYOMING_PORT_ENV: str(wyoming_port),
        addon.HTTP_PORT_ENV: str(http_port),
        "SUPERVISOR_TOKEN": "token-for-tests",
        # Quick on a tiny model: variables the server reads for what the add-on leaves to it.
        "QWEN3TTS_WARMUP": "0",
        "QWEN3TTS_GREEDY": "1",
        "QWEN3TTS_MAX_FRAMES": "8",
    }


async def describe_and_speak(port: int, text: str) -> Info:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        while not Info.is_type((event := await client.read_event()).type):
            pass
        info = Info.from_event(event)
        await client.write_event(Synthesize(text=text).event())
        while not AudioStop.is_type((event := await client.read_event()).type):
            pass
    return info


def http_status(port: int, path: str, key: str | None = None, source: str = "127.0.0.2") -> int:
    """The status of GET path, asked from the loopback address `source` (127.0.0.1 is the trusted peer
    the tests give the add-on in place of the ingress proxy)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        return connection.getresponse().status
    finally:
        connection.close()


@contextlib.contextmanager
def started_addon(data: Path, options: dict[str, Any], supervisor: StandInSupervisor) -> Iterator[Any]:
    """`python -m wyoming_qwen3tts.addon` with these options, until its discovery arrived; stopped with
    SIGTERM after the block, which must end it with exit code 0 and the server with it."""
    (data / "options.json").write_text(json.dumps(options))
    wyoming_port, http_port = free_port(), free_port()
    env = addon_env(data, supervisor.url, wyoming_port, http_port) | {addon.INGRESS_PEER_ENV: "127.0.0.1"}
    supervisor.received.clear()
    supervisor.posts.clear()
    process = subprocess.Popen(
        [sys.executable, "-m", "wyoming_qwen3tts.addon"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    run = types.SimpleNamespace(process=process, lines=lines, wyoming_port=wyoming_port, http_port=http_port)
    try:
        assert supervisor.received.wait(120), "no discovery within 120 s:\n" + "".join(lines)
        yield run
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        reader.join(timeout=10)
    assert code == 0, "".join(lines)
    with contextlib.closing(socket.socket()) as probe:  # the server stopped with the add-on
        assert probe.connect_ex(("127.0.0.1", wyoming_port)) != 0


def test_the_start_serves_the_options_and_announces_itself(tiny_models, supervisor, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # The model where a hub id's download would put it, so the start finds it and downloads nothing.
    (data / "Qwen3-TTS-12Hz-0.6B-CustomVoice").symlink_to(tiny_models["custom_voice"])
    options = {"model": "Qwen3-TTS-12Hz-0.6B-CustomVoice", "voice": "vivian", "language": "de"}
    options |= {
        "backend": "pytorch",
        "precision": "auto",
        "threads": 1,
        "http_api": True,
        "log_level": "info",
    }

    with started_addon(data, options, supervisor) as run:
        (post,) = supervisor.posts
        assert post["path"] == "/discovery"
        assert post["authorization"] == "Bearer token-for-tests"
        assert post["body"]["service"] == "wyoming"
        # As Home Assistant's Wyoming config flow reads it: urlparse(config["uri"]) -> hostname, port.
        uri = urlparse(post["body"]["config"]["uri"])
        assert (uri.scheme, uri.hostname, uri.port) == ("tcp", socket.gethostname(), run.wyoming_port)

        info = asyncio.run(describe_and_speak(run.wyoming_port, "Guten Tag."))
        assert info.tts and info.tts[0].name == "qwen3-tts"
        # The voice and language options are the defaults a request without them gets.
        deadline = time.monotonic() + 30
        while (
            not any(" request client=wyoming " in line for line in run.lines) and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        (request,) = [line for line in run.lines if " request client=wyoming " in line]
        assert " voice=vivian " in request and " language=german " in request

        key_file = data / addon.KEY_FILE
        key = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        port = run.http_port
        assert http_status(port, "/health") == 200
        assert http_status(port, "/v1/audio/voices") == 401  # the API asks for the key...
        assert http_status(port, "/v1/audio/voices", key) == 200  # ...the stored one
        assert http_status(port, "/v1/audio/voices", source="127.0.0.1") == 200  # the trusted peer: none
        assert any(f"HTTP API key (Authorization: Bearer ...): {key}" in line for line in run.lines)
        assert (data / "voices").is_dir()
        # The server gets the key by environment (not in its command line) and not the Supervisor's token.
        pid = run.process.pid
        (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        assert f"QWEN3TTS_HTTP_API_KEY={key}".encode() in environ
        assert not any(entry.startswith(b"SUPERVISOR_TOKEN=") for entry in environ)
        assert key.encode() not in Path(f"/proc/{child}/cmdline").read_bytes()
    log = "".join(run.lines)
    assert "Announced tcp://" in log and "Starting Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice" in log

    # A second start, with the HTTP API turned off: the stored key stays, but the server does not take
    # it; only the trusted peer (the ingress proxy) is served.
    with started_addon(data, options | {"http_api": False}, supervisor) as run:
        assert supervisor.posts and supervisor.posts[0]["body"]["service"] == "wyoming"
        assert (data / addon.KEY_FILE).read_text().strip() == key
        port = run.http_port
        assert http_status(port, "/v1/audio/voices", key) == 401
        assert http_status(port, "/v1/audio/voices", source="127.0.0.1") == 200
        assert http_status(port, "/", source="127.0.0.1") == 200  # the voice studio page
    assert key not in "".join(run.lines) and "Generated an HTTP API key" not in "".join(run.lines)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"backend": "cuda"}', "option 'backend' is 'cuda'"),
        ("{not json", "is not readable JSON"),
        (None, "does not exist"),
    ],
)
def test_bad_options_json_stops_the_start_with_one_line(tmp_path, content, named):
    if content is not None:
        (tmp_path / "options.json").write_text(content)
    done = subprocess.run(
        [sys.executable, "-m", "wyoming_qwen3tts.addon"],
        env=addon_env(tmp_path, "http://127.0.0.1:9", free_port(), free_port()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == addon.EXIT_BAD_OPTIONS
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert "ERROR" in line and "Cannot start:" in line and named in line

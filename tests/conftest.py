"""Shared fixtures: tiny random-weight models built once per session, and the real server on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def single_torch_thread():
    """For modules of tiny tensors: they gain nothing from intra-op threads, and on a busy machine
    the spare threads spin-wait. Applied with pytestmark = pytest.mark.usefixtures(...)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny model directory per kind, built lazily."""
    root = tmp_path_factory.mktemp("models")
    built: dict[str, Path] = {}

    class Models(dict):
        def __missing__(self, kind: str) -> Path:
            built[kind] = build_tiny_model(root / kind, kind)
            self[kind] = built[kind]
            return built[kind]

    return Models()


@pytest.fixture(scope="session")
def ov_exports(tiny_models, tmp_path_factory) -> dict[tuple[str, ...], Path]:
    """OpenVINO exports of the tiny models, made lazily once per session: ov_exports["base", "fp32"].

    ov_exports[kind, weights, "steps"] is an export without the codec and the cloning encoders, for
    tests that run only the talker and predictor steps (about a third faster to make); where the full
    export of that (kind, weights) exists already, it is that.
    """
    root = tmp_path_factory.mktemp("openvino")

    class Exports(dict):
        def __missing__(self, key: tuple[str, ...]) -> Path:
            from openvino_child import check_compiles_in_child

            from wyoming_qwen3tts.engine.openvino import codec, encoders
            from wyoming_qwen3tts.engine.openvino.export import export_model
            from wyoming_qwen3tts.engine.openvino.runtime import compile_config

            kind, weights, *steps_only = key
            if steps_only and (kind, weights) in self:
                return self[kind, weights]
            with pytest.MonkeyPatch.context() as patch:
                if steps_only:
                    patch.setattr(codec, "export_codec", lambda *args, **kwargs: None)
                    patch.setattr(encoders, "export_encoders", lambda *args, **kwargs: None)
                started = time.monotonic()
                name = "-".join(key)
                path = export_model(tiny_models[kind], root / name, weights, progress=lambda _: None)
            print(f"\nexported {name} in {time.monotonic() - started:.0f} s")
            # A native crash of OpenVINO fails this test, not the whole run (tests/openvino_child.py).
            check_compiles_in_child(sorted(path.glob("*.xml")), compile_config("CPU", 1))
            self[key] = path
            return path

    return Exports()


@pytest.fixture(scope="session")
def voices_dir(tmp_path_factory) -> Path:
    """A voices directory with one in-context clone (audio + transcript) and one audio-only clone."""
    path = tmp_path_factory.mktemp("voices")
    rate = 24000
    t = np.arange(int(1.5 * rate)) / rate
    rng = np.random.default_rng(1)
    audio = 0.3 * np.sin(2 * np.pi * 180 * t) * (
        1 + 0.5 * np.sin(2 * np.pi * 3 * t)
    ) + 0.02 * rng.standard_normal(t.size)
    sf.write(path / "anna.wav", audio.astype(np.float32), rate)
    (path / "anna.txt").write_text("Hello, this is my voice.\n", encoding="utf-8")
    (path / "anna.json").write_text('{"language": "en", "description": "Anna, cloned"}', encoding="utf-8")
    sf.write(path / "bob.wav", (0.5 * audio[::-1]).astype(np.float32), rate)
    return path


def snr_db(reference, other) -> float:
    """Signal-to-noise ratio of other against reference (numpy arrays or CPU tensors), in dB."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = np.sum((reference - np.asarray(other, dtype=np.float64)) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))


def cosines(a: list, b: list):
    """Cosine similarity of each pair of logits tensors; -inf (masked) entries count as 0."""
    import torch

    def finite(x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isfinite(x), x, torch.zeros_like(x))

    return torch.stack(
        [
            torch.nn.functional.cosine_similarity(finite(x), finite(y), dim=0)
            for x, y in zip(a, b, strict=True)
        ]
    )


def assert_logits_agree(expected: list, got: list, label: str, mean_min: float, worst_min: float) -> None:
    """Teacher-forced logits of two runs agree: as many, and cosine at least mean_min on average and
    worst_min everywhere; the measurement is printed (pytest -s) for notes."""
    similarity = cosines(expected, got)
    print(f"{label}: mean cosine {similarity.mean():.5f}, worst {similarity.min():.5f}")
    assert len(got) == len(expected)
    assert similarity.mean() >= mean_min
    assert similarity.min() >= worst_min


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m wyoming_qwen3tts` on a loopback port, as a user would start it.

    Its output is read as it comes, on a thread (a full pipe would stall the server): `log()` is what it
    printed so far. A test that fails gets the tail of each started server's log in its report, and a
    dead server's exit status (pytest_runtest_makereport below).
    """

    started: list[ServerProcess] = []  # every server not yet stopped

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.uri = f"tcp://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wyoming_qwen3tts", "--uri", self.uri, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ServerProcess.started.append(self)

    def _read(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in self.process.stdout:
                self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def death(self) -> str | None:
        """How the server ended, if it has: its exit status and the tail of its log."""
        code = self.process.poll()
        if code is None:
            return None
        self._reader.join(timeout=5)
        status = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return f"server {self.uri} ({status}); its log ends:\n{self.log()[-4000:]}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (death := self.death()) is not None:
                raise RuntimeError(f"the server did not start: {death}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.2)
        raise TimeoutError("server did not start")

    def stop(self) -> str:
        """Stop the server (SIGTERM, then SIGKILL after 20 s) and return all it printed."""
        with contextlib.suppress(ValueError):
            ServerProcess.started.remove(self)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        return self.log()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test shows the log tail of every server still started: a server that died says so, with
    its exit status (a signal names a native crash); one still running, what it last did (a flaky
    failure is then read from the report, not guessed at)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in list(ServerProcess.started):
            if (death := server.death()) is not None:
                report.sections.append(("a server of this test died", death))
            else:
                tail = server.log()[-4000:]
                report.sections.append((f"server {server.uri}, still running: its log ends", tail))


@contextlib.contextmanager
def running_server(args: list[str]) -> Iterator[ServerProcess]:
    server = ServerProcess(args)
    try:
        server.wait_ready()
        yield server
    finally:
        output = server.stop()
        if os.environ.get("SHOW_SERVER_LOG"):
            print(output)


def run_server_command(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m wyoming_qwen3tts ARGS` to its end (for start-up problems), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "wyoming_qwen3tts", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


BACKENDS = ("pytorch", "openvino")
# Server flags for tests that do not depend on how long a sentence is: greedy (audio is a function of text
# and voice), no warm-up, one thread (tiny tensors), a sentence cut at 16 frames (1.28 s of audio), and no
# move onto huge pages (half a second a start; tests/test_memory.py tests it, with the default).
QUICK = ["--greedy", "--no-warmup", "--threads", "1", "--max-frames", "16", "--no-huge-pages"]


def server_args(backend: str, kind: str, tiny_models, ov_exports) -> list[str]:
    """The arguments that serve the tiny model of this kind on this backend: OpenVINO from its fp32 export."""
    args = ["--model", str(tiny_models[kind])]
    if backend == "openvino":
        args += ["--backend", "openvino", "--ov-model-dir", str(ov_exports[kind, "fp32"])]
    return args


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    """The backend an end-to-end test's servers run on: the tests that take it run once on each. Module
    scope: pytest runs a module's tests backend by backend, and its module-scoped servers start once each."""
    return request.param


@pytest.fixture(scope="module")
def model_args(backend, tiny_models, ov_exports) -> Callable[[str], list[str]]:
    """model_args(kind): server_args for this module's backend."""
    return lambda kind: server_args(backend, kind, tiny_models, ov_exports)


@pytest.fixture(scope="module")
def custom_voice_server(model_args) -> Iterator[ServerProcess]:
    with running_server([*model_args("custom_voice"), *QUICK]) as server:
        yield server

"""The one list of backends: each one's name, its own options, how it is loaded and what it needs to run.

settings.py builds --backend and each backend's flags from this list and asks it whether the chosen
backend can run here; `create_engine` is the boundary where the server's Settings become the chosen
backend's engine, which receives only its own options. Import-light: nothing here imports torch or
openvino; a backend's modules are imported when it is loaded. A new backend is a folder of its own
with an options module (its dataclass and flags, import-light), an entry in BACKENDS and, if it brings
options of its own, a field of that group's name on settings.Settings. script/run runs a backend from
.venv-<name> where that environment exists (ipex: `script/setup --ipex`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..flags import FlagGroup, SettingsError, boolean
from ..memory import collapse_loaded_memory
from .model_files import resolve_model_dir
from .openvino.options import OPENVINO_FLAGS, OpenVINOOptions
from .options import EngineOptions
from .pytorch.options import TORCH_FLAGS, TorchOptions, ipex_problem

if TYPE_CHECKING:
    from .seams import Engine

_LOGGER = logging.getLogger(__name__)


class EngineSettings(Protocol):
    """What create_engine reads of settings.Settings (settings.py imports this module, not the reverse)."""

    @property
    def backend(self) -> str: ...

    @property
    def engine(self) -> EngineOptions: ...

    @property
    def torch(self) -> TorchOptions: ...

    @property
    def openvino(self) -> OpenVINOOptions: ...


def _runs_anywhere() -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One backend: the options it reads besides EngineOptions, how to load it, what stops it here."""

    name: str
    options: FlagGroup  # its own options and their flags (the ipex backend reads the pytorch backend's)
    load: Callable[[EngineSettings, Path | None], Engine]  # imports the backend's modules when called
    problem: Callable[[], str | None] = _runs_anywhere  # why it cannot run in this Python environment


def _model_dir(options: EngineOptions, model_dir: Path | None) -> Path:
    return model_dir or resolve_model_dir(options.model, options.data_dir)


def _load_pytorch(settings: EngineSettings, model_dir: Path | None) -> Engine:
    from .pytorch.engine import PyTorchEngine

    return PyTorchEngine(_model_dir(settings.engine, model_dir), settings.engine, settings.torch)


def _load_ipex(settings: EngineSettings, model_dir: Path | None) -> Engine:
    from .pytorch.ipex import IpexEngine  # imports IPEX only after checking the torch beside it

    return IpexEngine(_model_dir(settings.engine, model_dir), settings.engine, settings.torch)


def _load_openvino(settings: EngineSettings, model_dir: Path | None) -> Engine:
    # The OpenVINO backend can serve an export without the model it was made from, so it looks for the
    # model itself.
    from .openvino.engine import OpenVINOEngine

    if settings.torch.compile:
        _LOGGER.warning("--compile skipped: it applies to --backend pytorch; OpenVINO compiles its own")
    return OpenVINOEngine(settings.engine, settings.openvino, model_dir)


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("pytorch", TORCH_FLAGS, _load_pytorch),
        Backend("ipex", TORCH_FLAGS, _load_ipex, ipex_problem),
        Backend("openvino", OPENVINO_FLAGS, _load_openvino),
    )
}


def option_groups() -> list[FlagGroup]:
    """Every backend's own options group, each once, in the order of BACKENDS."""
    groups: dict[str, FlagGroup] = {}
    for backend in BACKENDS.values():
        groups.setdefault(backend.options.name, backend.options)
    return list(groups.values())


def legacy_backend(environ: Mapping[str, str]) -> str | None:
    """USE_IPEX=1 and OV_MODEL_DIR choose a backend, as in other Qwen3-TTS CPU servers."""
    try:
        use_ipex = boolean(environ.get("USE_IPEX", "0") or "0")
    except ValueError as err:
        raise SettingsError(f"environment variable USE_IPEX: {err}") from None
    if use_ipex:
        return "ipex"
    if environ.get("OV_MODEL_DIR"):
        return "openvino"
    return None


def create_engine(settings: EngineSettings, model_dir: Path | None = None) -> Engine:
    """Load the model the settings name (or the one in model_dir) with the backend they name."""
    backend = BACKENDS.get(settings.backend)
    if backend is None:
        raise SettingsError(
            f"backend {settings.backend!r} is not available yet; available: {', '.join(BACKENDS)}"
        )
    engine = backend.load(settings, model_dir)
    if settings.engine.huge_pages:
        _LOGGER.info("%s", collapse_loaded_memory())
    return engine

"""Settings -> Engine: the one place that knows which backends exist."""

from __future__ import annotations

from pathlib import Path

from ..settings import AVAILABLE_BACKENDS, Settings, SettingsError
from .model_files import resolve_model_dir
from .seams import Engine


def create_engine(settings: Settings, model_dir: Path | None = None) -> Engine:
    """Load the model the settings name (or the one in model_dir) with the backend they name.

    The OpenVINO backend can serve an export without the model it was made from,
    so it looks for the model itself.
    """
    if settings.backend == "openvino":
        from .openvino.engine import OpenVINOEngine

        return OpenVINOEngine(settings, model_dir)
    if settings.backend == "pytorch":
        from .pytorch.engine import PyTorchEngine

        return PyTorchEngine(model_dir or resolve_model_dir(settings.model, settings.data_dir), settings)
    if settings.backend == "ipex":
        from .pytorch.ipex import IpexEngine  # imports IPEX only after checking the torch beside it

        return IpexEngine(model_dir or resolve_model_dir(settings.model, settings.data_dir), settings)
    raise SettingsError(
        f"backend {settings.backend!r} is not available yet; available: {', '.join(AVAILABLE_BACKENDS)}"
    )

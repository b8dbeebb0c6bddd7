"""Settings -> Engine: the one place that knows which backends exist."""

from __future__ import annotations

from pathlib import Path

from ..settings import AVAILABLE_BACKENDS, Settings, SettingsError
from .base import Engine


def create_engine(settings: Settings, model_dir: Path) -> Engine:
    """Load the model in model_dir with the backend the settings name."""
    if settings.backend == "pytorch":
        from .pytorch import PyTorchEngine

        return PyTorchEngine(model_dir, settings)
    raise SettingsError(
        f"backend {settings.backend!r} is not available yet; available: {', '.join(AVAILABLE_BACKENDS)}"
    )

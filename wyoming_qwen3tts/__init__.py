"""wyoming-qwen3tts: Qwen3-TTS text to speech on the CPU, for Home Assistant (Wyoming) and OpenAI clients.

The public entry points, imported on first use so that `import wyoming_qwen3tts` stays light:
Settings (every option), create_engine (Settings -> a loaded engine) and SpeechService (requests -> PCM).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Settings", "SpeechService", "__version__", "create_engine"]

_HOMES = {"Settings": ".settings", "create_engine": ".engine.registry", "SpeechService": ".service"}

if TYPE_CHECKING:
    from .engine.registry import create_engine
    from .service import SpeechService
    from .settings import Settings


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value
    return value

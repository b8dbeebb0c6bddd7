"""Speech engines: the seams every backend fills (seams.py), the one list of backends (registry.py), what
every backend shares (options.py, pipeline.py, loop.py, prompt.py, codec.py) and one folder per backend.

Import-light: settings.py reads the registry and the options without torch, so Engine and Voice are
imported here only when first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..requests import EngineError

if TYPE_CHECKING:
    from ..voices.voice import Voice
    from .seams import Engine

__all__ = ["Engine", "EngineError", "Voice"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .seams import Engine

        return Engine
    if name == "Voice":
        from ..voices.voice import Voice

        return Voice
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Speech engines: the backend-neutral interface, the factory and one module per backend."""

from .base import Engine, EngineError, Voice

__all__ = ["Engine", "EngineError", "Voice"]

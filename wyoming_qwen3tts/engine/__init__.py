"""Speech engines: the backend-neutral interface, the factory and one module per backend."""

from ..requests import EngineError
from ..voices.voice import Voice
from .seams import Engine

__all__ = ["Engine", "EngineError", "Voice"]

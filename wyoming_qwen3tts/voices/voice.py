"""The Voice a client asks for by name: what the catalog lists and the engine speaks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Voice:
    """One voice a client can ask for by name.

    kind is "preset" (a CustomVoice speaker), "clone" (a Base model prompt built
    from reference audio) or "design" (a VoiceDesign instruction).
    languages holds the model's language names ("english"); an empty tuple means
    the voice speaks every language the model knows.
    """

    name: str
    kind: str
    description: str = ""
    languages: tuple[str, ...] = ()
    speaker: str | None = None
    instruct: str | None = None
    clone_prompt: Any = field(default=None, compare=False, repr=False)

"""What the speech API's routes share: the state of the API, the busy check, the voice list's items.

Kept apart from app.py so that the route modules (app.py, studio.py) import it and not each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ..languages import bcp47_codes
from ..requests import BUSY
from ..service import SpeechService
from .errors import LOADING, ApiError
from .openai_names import OPENAI_VOICES, voice_for

_LOGGER = logging.getLogger(__name__)


@dataclass
class ApiState:
    """What the routes need; `service` is None while the model loads."""

    model_name: str
    backend: str
    api_key: str | None = None
    max_requests: int = 4
    trusted_peer: str | None = None  # requests from this address need no key (a proxy that authenticates)
    service: SpeechService | None = None
    active: int = 0  # syntheses streaming now
    on_ready: list[Callable[[SpeechService], None]] = field(default_factory=list)

    def ready(self, service: SpeechService) -> None:
        self.service = service
        for call in self.on_ready:
            call(service)

    def loaded(self) -> SpeechService:
        if self.service is None:
            raise ApiError(
                503,
                "The model is still loading; try again shortly",
                LOADING,
                kind="server_error",
                headers={"Retry-After": "5"},
            )
        return self.service


def check_not_busy(state: ApiState) -> None:
    if state.active >= state.max_requests:
        raise ApiError(
            503,
            f"The server is busy with {state.active} requests; try again shortly",
            BUSY,
            kind="server_error",
            headers={"Retry-After": "1"},
        )


def peer(request: Request) -> Any:
    return (request.client.host, request.client.port) if request.client else None


def voice_items(service: SpeechService, editable: Collection[str] = ()) -> list[dict[str, Any]]:
    """Every voice as GET /v1/audio/voices lists it; editable: the names voices.json defines."""
    catalog = service.voices()
    default = service.default_voice()
    overrides = service.openai_voices()
    aliases: dict[str, list[str]] = {}
    for name in sorted({*OPENAI_VOICES, *overrides}):
        voice = voice_for(name, catalog, default, overrides)
        if voice is not None and voice.name.casefold() != name:
            aliases.setdefault(voice.name, []).append(name)
    in_file = {name.casefold() for name in editable}
    return [
        {
            "id": voice.name,
            "name": voice.name,
            "kind": voice.kind,
            "description": voice.description or voice.name,
            "languages": bcp47_codes(service.voice_languages(voice)),  # as describe lists them
            "follows_instructions": service.follows_instructions(voice),
            "openai_names": aliases.get(voice.name, []),
            "editable": voice.name.casefold() in in_file,
        }
        for voice in catalog
    ]

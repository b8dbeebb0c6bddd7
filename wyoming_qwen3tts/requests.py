"""What a request can end in besides audio: the errors both front ends pass on, and their codes.

A Wyoming client gets the code in an `error` event, an HTTP client in the error body; the codes are
defined here once. RequestError is a request the server refuses (before or while speaking it);
EngineError is one the engine cannot serve (a voice that cannot be built, audio that cannot be read).
"""

from __future__ import annotations

UNKNOWN_VOICE = "unknown-voice"
UNSUPPORTED_LANGUAGE = "unsupported-language"
TEXT_TOO_LONG = "text-too-long"
INVALID_SSML = "invalid-ssml"
INVALID_EVENT = "invalid-event"
SYNTHESIS_FAILED = "synthesis-failed"
BUSY = "busy"


class RequestError(Exception):
    """A request this server refuses; the message and code go to the client."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class EngineError(Exception):
    """A request the engine cannot serve; the message is shown to the client."""

    def __init__(self, message: str, code: str = SYNTHESIS_FAILED) -> None:
        super().__init__(message)
        self.code = code

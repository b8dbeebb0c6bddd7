"""HTTP errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and the status and
parameter each of the service's error codes (requests.py) gets over HTTP.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..requests import (
    INVALID_SSML,
    TEXT_TOO_LONG,
    UNKNOWN_VOICE,
    UNSUPPORTED_LANGUAGE,
    EngineError,
    RequestError,
)

# Codes only the HTTP API sends.
LOADING = "loading"
INVALID_REQUEST = "invalid-request"
INVALID_API_KEY = "invalid_api_key"
MODEL_NOT_FOUND = "model_not_found"
EMPTY_INPUT = "empty-input"
UNSUPPORTED_FORMAT = "unsupported-format"
INVALID_SPEED = "invalid-speed"
# The voice studio's (http/studio.py).
VOICE_WRITES_OFF = "voice_writes_off"  # 403: no --http-api-key, no --voices-dir, or a read-only directory
VOICE_EXISTS = "voice_exists"  # 409
VOICE_NOT_EDITABLE = "voice_not_editable"  # 400: a preset or per-file voice, not a voices.json entry
INVALID_VOICE_NAME = "invalid_voice_name"  # 400
UPLOAD_TOO_LARGE = "upload_too_large"  # 413
VOICES_FILE_BROKEN = "voices_file_broken"  # 409: voices.json cannot be read; a person must fix it first
VOICE_SAVE_FAILED = "voice_save_failed"  # 500, or 507 on a full disk; nothing was changed

# The service's codes that are not "bad request" over HTTP, and the body field each one is about.
STATUS_OF_CODE = {UNKNOWN_VOICE: 404}
PARAM_OF_CODE = {
    UNKNOWN_VOICE: "voice",
    UNSUPPORTED_LANGUAGE: "language",
    TEXT_TOO_LONG: "input",
    INVALID_SSML: "input",
}


class ApiError(Exception):
    """An HTTP error in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.param, self.kind, self.headers = status, code, param, kind, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def api_error(err: RequestError | EngineError) -> ApiError:
    """A refusal of the service (or the engine), as the HTTP error it is."""
    return ApiError(STATUS_OF_CODE.get(err.code, 400), str(err), err.code, PARAM_OF_CODE.get(err.code))

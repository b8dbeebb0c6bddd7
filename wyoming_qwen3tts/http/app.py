"""The OpenAI-compatible speech API: routes over the same speech layer the Wyoming handler uses.

Audio is streamed as it is synthesized (chunked transfer, or OpenAI's SSE
events), encoded by PyAV as it goes. Errors before the first byte use
OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the
speech layer's codes. The app exists before the model is loaded: /health
answers 503 until `ApiState.ready()` is called.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from ..languages import bcp47_codes
from ..requests import UNKNOWN_VOICE, EngineError, RequestError
from ..service import NAME_SHOWN, Part, Speech, Utterance, VoiceRequest, describe_client, short_failure
from ..voices.config import CONFIG_NAME, read_openai_voices
from .encoding import FORMATS, SPEED_RANGE, AudioEncoder, AudioFormat
from .openai_names import MODEL_NAMES, OPENAI_VOICES, UnknownModel, language_of_model, voice_for

_LOGGER = logging.getLogger(__name__)

INSTRUCTIONS_HEADER = "X-Instructions-Ignored"
MAX_REFERENCE_BYTES = 20 * 1024 * 1024  # base64-decoded reference audio of a voice-clone request


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


# Speech-layer codes that are not "bad request" over HTTP.
_STATUS_OF_CODE = {UNKNOWN_VOICE: 404}
_PARAM_OF_CODE = {
    UNKNOWN_VOICE: "voice",
    "unsupported-language": "language",
    "text-too-long": "input",
    "invalid-ssml": "input",
}


def _api_error(err: RequestError | EngineError) -> ApiError:
    return ApiError(_STATUS_OF_CODE.get(err.code, 400), str(err), err.code, _PARAM_OF_CODE.get(err.code))


class SpeechRequest(BaseModel):
    """OpenAI's `audio.speech.create` body, with this server's extras (language, text_format)."""

    model: str = "qwen3-tts"
    input: str
    voice: str | dict[str, Any] | None = None
    response_format: str = "mp3"
    speed: float = 1.0
    instructions: str | None = None
    language: str | None = Field(None, description="a language (en, german, ...); default: the voice's")
    stream_format: Literal["audio", "sse"] = "audio"
    text_format: Literal["text", "ssml"] = "text"


class VoiceCloneRequest(BaseModel):
    """Speech in a voice cloned from reference audio sent with the request (Base models)."""

    input: str
    ref_audio: str = Field(description="the reference recording, base64 (wav, flac, ogg or mp3)")
    ref_text: str | None = Field(
        None, description="its transcript; without it only the speaker embedding is used"
    )
    x_vector_only_mode: bool = Field(False, description="use only the speaker embedding, even with ref_text")
    language: str | None = None
    response_format: str = "mp3"
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] = "audio"


@dataclass
class ApiState:
    """What the routes need; `speech` is None while the model loads."""

    model_name: str
    backend: str
    api_key: str | None = None
    max_requests: int = 4
    voices_dir: Path | None = None
    speech: Speech | None = None
    active: int = 0
    _overrides: tuple[float, dict[str, str]] = field(default=(-1.0, {}))

    def ready(self, speech: Speech) -> None:
        self.speech = speech

    def loaded(self) -> Speech:
        if self.speech is None:
            raise ApiError(
                503,
                "The model is still loading; try again shortly",
                "loading",
                kind="server_error",
                headers={"Retry-After": "5"},
            )
        return self.speech

    def openai_overrides(self) -> dict[str, str]:
        """voices.json's openai_voices, re-read when the file changes."""
        if self.voices_dir is None:
            return {}
        path = self.voices_dir / CONFIG_NAME
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return {}
        if mtime != self._overrides[0]:
            self._overrides = (mtime, read_openai_voices(path))
        return self._overrides[1]


def create_app(state: ApiState) -> FastAPI:
    """The FastAPI app of the speech API (OpenAPI docs at /docs)."""
    app = FastAPI(
        title="wyoming-qwen3tts speech API",
        description="OpenAI-compatible text to speech with Qwen3-TTS on the CPU, streamed as it is made.",
        version="1",
    )

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = f"{'.'.join(location) or 'body'}: {first.get('msg', 'invalid request')}"
        return ApiError(400, message, "invalid-request", location[-1] if location else None).response()

    @app.middleware("http")
    async def bearer_token(request: Request, call_next: Any) -> Any:
        open_paths = ("/", "/health", "/docs", "/openapi.json")
        if state.api_key and request.url.path not in open_paths:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                return ApiError(
                    401,
                    "Missing or wrong API key (Authorization: Bearer ...)",
                    "invalid_api_key",
                    kind="authentication_error",
                ).response()
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.speech is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        engine = state.speech.engine
        return JSONResponse(
            {
                "status": "ok",
                "model": state.model_name,
                "backend": state.backend,
                "voices": len(engine.voices()),
            }
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "qwen"} for name in MODEL_NAMES
            ],
        }

    @app.get("/v1/audio/voices")
    @app.get("/v1/voices", include_in_schema=False)
    async def voices() -> dict[str, Any]:
        speech = state.loaded()
        engine = speech.engine
        catalog = engine.voices()
        default = speech.default_voice()
        overrides = state.openai_overrides()
        aliases: dict[str, list[str]] = {}
        for name in sorted({*OPENAI_VOICES, *overrides}):
            voice = voice_for(name, catalog, default, overrides)
            if voice is not None and voice.name.casefold() != name:
                aliases.setdefault(voice.name, []).append(name)
        return {
            "object": "list",
            "data": [
                {
                    "id": voice.name,
                    "name": voice.name,
                    "kind": voice.kind,
                    "description": voice.description or voice.name,
                    "languages": bcp47_codes(voice.languages or engine.languages()),  # as describe lists them
                    "follows_instructions": engine.follows_instructions(voice),
                    "openai_names": aliases.get(voice.name, []),
                }
                for voice in catalog
            ],
        }

    @app.post("/v1/audio/speech", response_class=StreamingResponse)
    async def speech(body: SpeechRequest, request: Request) -> StreamingResponse:
        """Speech of `input`, streamed as it is synthesized."""
        speech, audio_format = _checked(state, body.input, body.response_format, body.speed)
        try:
            model_language = language_of_model(body.model)
        except UnknownModel as err:
            raise ApiError(400, str(err), "model_not_found", "model") from None
        voice_name = _voice_name(body.voice)
        voice_request = VoiceRequest(
            name=None, language=body.language or model_language, instructions=body.instructions
        )
        client = describe_client(_peer(request), "http")
        try:
            if voice_name:
                voice = voice_for(
                    voice_name, speech.engine.voices(), speech.default_voice(), state.openai_overrides()
                )
                if voice is None:
                    raise RequestError(
                        f"Unknown voice {voice_name[:NAME_SHOWN]!r}; GET /v1/audio/voices lists them",
                        UNKNOWN_VOICE,
                    )
                voice_request = VoiceRequest(
                    name=voice.name, language=voice_request.language, instructions=body.instructions
                )
            utterance, parts = speech.prepare(body.input, body.text_format, voice_request, client)
        except (RequestError, EngineError) as err:
            raise _api_error(err) from None
        headers = {}
        if utterance.instructions_ignored:
            headers[INSTRUCTIONS_HEADER] = f"voice {utterance.voice.name} does not follow instructions"
        return _respond(
            state, speech, utterance, parts, audio_format.name, body.speed, body.stream_format, headers
        )

    @app.post("/v1/audio/voice-clone", response_class=StreamingResponse)
    async def voice_clone(body: VoiceCloneRequest, request: Request) -> StreamingResponse:
        """Speech of `input` in the voice of `ref_audio` (Base models), streamed."""
        speech, audio_format = _checked(state, body.input, body.response_format, body.speed)
        try:
            audio = base64.b64decode(body.ref_audio, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "ref_audio must be base64", "invalid-audio", "ref_audio") from None
        if not audio or len(audio) > MAX_REFERENCE_BYTES:
            raise ApiError(
                400,
                f"ref_audio must hold 1 byte to {MAX_REFERENCE_BYTES // 2**20} MB",
                "invalid-audio",
                "ref_audio",
            )
        transcript = None if body.x_vector_only_mode else (body.ref_text or "").strip() or None
        _check_not_busy(state)
        try:
            speech.check_text(body.input)
            voice = await speech.inference.run(speech.engine.clone_voice, audio, transcript)
            utterance = Utterance(
                voice=voice, language="auto", client=describe_client(_peer(request), "http")
            )
            utterance.language = speech.resolve_language(voice, body.language)
        except (RequestError, EngineError) as err:
            raise _api_error(err) from None
        parts = speech.text_parts(body.input)
        return _respond(
            state, speech, utterance, parts, audio_format.name, body.speed, body.stream_format, {}
        )

    return app


def _respond(
    state: ApiState,
    speech: Speech,
    utterance: Utterance,
    parts: Sequence[Part],
    format_name: str,
    speed: float,
    stream_format: str,
    headers: dict[str, str],
) -> StreamingResponse:
    _check_not_busy(state)
    audio = _encoded(
        state, speech, utterance, parts, AudioEncoder(FORMATS[format_name], speech.engine.sample_rate, speed)
    )
    if stream_format == "sse":
        return StreamingResponse(_sse(audio), media_type="text/event-stream", headers=headers)
    return StreamingResponse(audio, media_type=FORMATS[format_name].content_type, headers=headers)


async def _encoded(
    state: ApiState, speech: Speech, utterance: Utterance, parts: Sequence[Part], encoder: AudioEncoder
) -> AsyncGenerator[bytes, None]:
    """Encoded audio as it is synthesized; the request holds a slot while this runs."""
    state.active += 1
    outcome = "cancelled"
    try:
        async with aclosing(speech.stream(utterance, parts)) as pcm_chunks:
            async for pcm in pcm_chunks:
                data = encoder.encode(pcm)
                if data:
                    yield data
        yield encoder.finish()
        outcome = "ok"
    except (RequestError, EngineError) as err:
        outcome = f"error:{err.code}"
        _LOGGER.warning("HTTP synthesis failed after the response started: %s", err)
    except asyncio.CancelledError:
        raise
    except Exception as err:
        outcome = "error:synthesis-failed"
        _LOGGER.exception("HTTP synthesis failed: %s", short_failure(err))
    finally:
        state.active -= 1
        speech.log_finished(utterance, outcome)


async def _sse(audio: AsyncGenerator[bytes, None]) -> AsyncGenerator[str, None]:
    """OpenAI's speech SSE: speech.audio.delta events with base64 audio, then speech.audio.done."""
    sent = 0
    async with aclosing(audio):  # type: ignore[type-var]
        async for data in audio:
            if data:
                sent += len(data)
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    yield _event(
        {"type": "speech.audio.done", "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
    )


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _check_not_busy(state: ApiState) -> None:
    if state.active >= state.max_requests:
        raise ApiError(
            503,
            f"The server is busy with {state.active} requests; try again shortly",
            "busy",
            kind="server_error",
            headers={"Retry-After": "1"},
        )


def _audio_format(name: str) -> AudioFormat:
    audio_format = FORMATS.get(name.strip().lower())
    if audio_format is None:
        raise ApiError(
            400,
            f"response_format {name!r} is not supported; use {', '.join(FORMATS)}",
            "unsupported-format",
            "response_format",
        )
    return audio_format


def _checked(state: ApiState, text: str, response_format: str, speed: float) -> tuple[Speech, AudioFormat]:
    """What every speech route checks first: a loaded model, some input, a known format, a speed."""
    speech = state.loaded()
    _check_input(text)
    audio_format = _audio_format(response_format)
    _check_speed(speed)
    return speech, audio_format


def _check_input(text: str) -> None:
    if not text.strip():
        raise ApiError(400, "input is empty; send the text to speak", "empty-input", "input")


def _check_speed(speed: float) -> None:
    if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise ApiError(
            400, f"speed must be between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}", "invalid-speed", "speed"
        )


def _voice_name(voice: str | dict[str, Any] | None) -> str | None:
    """OpenAI sends a name, or (newer clients) {"id": name}."""
    if isinstance(voice, dict):
        voice = voice.get("id") or voice.get("name")
    if voice is not None and not isinstance(voice, str):
        raise ApiError(400, "voice must be a name", "invalid-request", "voice")
    return voice.strip() if voice else None


def _peer(request: Request) -> Any:
    return (request.client.host, request.client.port) if request.client else None

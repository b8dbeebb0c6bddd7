"""The OpenAI-compatible speech API's routes, over the same speech service the Wyoming handler uses.

Audio streams as it is synthesized (chunked transfer, or OpenAI's SSE events), encoded as it goes. The app
exists before the model is loaded: /health answers 503 until `ApiState.ready()` is called. The voice
studio's routes (saving voices made in the browser) are studio.py's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from collections.abc import AsyncGenerator
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..requests import (
    INVALID_AUDIO,
    UNKNOWN_VOICE,
    EngineError,
    RequestError,
    VoiceRequest,
    describe_client,
    short_failure,
)
from ..requests import SpeechRequest as ServiceRequest  # this module's SpeechRequest is the HTTP body
from ..service import NAME_SHOWN, Speech, SpeechService
from .encoding import FORMATS, SPEED_RANGE, AudioEncoder, AudioFormat, sse_events
from .errors import (
    EMPTY_INPUT,
    INVALID_API_KEY,
    INVALID_REQUEST,
    INVALID_SPEED,
    MODEL_NOT_FOUND,
    UNSUPPORTED_FORMAT,
    ApiError,
    api_error,
)
from .openai_names import MODEL_NAMES, UnknownModel, language_of_model, voice_for
from .state import ApiState, check_not_busy, peer, voice_items
from .studio import Studio, StudioGate, studio_routes

__all__ = ["ApiState", "create_app"]

_LOGGER = logging.getLogger(__name__)

INSTRUCTIONS_HEADER = "X-Instructions-Ignored"
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
MAX_REFERENCE_BYTES = 20 * 1024 * 1024  # base64-decoded reference audio of a voice-clone request


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


def create_app(state: ApiState) -> FastAPI:
    """The FastAPI app of the speech API (OpenAPI docs at /docs)."""
    app = FastAPI(
        title="wyoming-qwen3tts speech API",
        description="OpenAI-compatible text to speech with Qwen3-TTS on the CPU, streamed as it is made.",
        version="1",
    )

    @app.exception_handler(ApiError)
    async def refused(_: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (an unknown path, a body that is not multipart) in the same shape."""
        code = HTTP_CODES.get(err.status_code, INVALID_REQUEST)
        headers = dict(err.headers) if err.headers else None
        return ApiError(err.status_code, str(err.detail), code, headers=headers).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = f"{'.'.join(location) or 'body'}: {first.get('msg', 'invalid request')}"
        return ApiError(400, message, INVALID_REQUEST, location[-1] if location else None).response()

    studio = Studio(state)
    app.include_router(studio_routes(studio))
    app.add_middleware(StudioGate, studio=studio)  # inside the key check: added before it

    @app.middleware("http")
    async def bearer_token(request: Request, call_next: Any) -> Any:
        open_paths = ("/", "/health", "/docs", "/openapi.json")
        client = request.client
        trusted = bool(state.trusted_peer) and client is not None and client.host == state.trusted_peer
        if state.api_key and not trusted and request.url.path not in open_paths:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                return ApiError(
                    401,
                    "Missing or wrong API key (Authorization: Bearer ...)",
                    INVALID_API_KEY,
                    kind="authentication_error",
                ).response()
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.service is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse(
            {
                "status": "ok",
                "model": state.model_name,
                "backend": state.backend,
                "voices": len(state.service.voices()),
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
        """Every voice; editable ones are defined in voices.json, which the voice studio may change."""
        return {"object": "list", "data": voice_items(state.loaded(), studio.editable())}

    @app.post("/v1/audio/speech", response_class=StreamingResponse)
    async def speech(body: SpeechRequest, request: Request) -> StreamingResponse:
        """Speech of `input`, streamed as it is synthesized."""
        service, audio_format = _checked(state, body.input, body.response_format, body.speed)
        try:
            model_language = language_of_model(body.model)
        except UnknownModel as err:
            raise ApiError(400, str(err), MODEL_NOT_FOUND, "model") from None
        voice_name = _voice_name(body.voice)
        asked = ServiceRequest(
            VoiceRequest(language=body.language or model_language, instructions=body.instructions),
            body.input,
            body.text_format,
            describe_client(peer(request), "http"),
        )
        try:
            voice = None
            if voice_name:
                voice = voice_for(
                    voice_name, service.voices(), service.default_voice(), service.openai_voices()
                )
                if voice is None:
                    raise RequestError(
                        f"Unknown voice {voice_name[:NAME_SHOWN]!r}; GET /v1/audio/voices lists them",
                        UNKNOWN_VOICE,
                    )
            spoken = service.speak(asked, voice)
        except (RequestError, EngineError) as err:
            raise api_error(err) from None
        headers = {}
        if spoken.utterance.instructions_ignored:
            headers[INSTRUCTIONS_HEADER] = f"voice {spoken.voice.name} does not follow instructions"
        return _respond(state, service, spoken, audio_format, body.speed, body.stream_format, headers)

    @app.post("/v1/audio/voice-clone", response_class=StreamingResponse)
    async def voice_clone(body: VoiceCloneRequest, request: Request) -> StreamingResponse:
        """Speech of `input` in the voice of `ref_audio` (Base models), streamed."""
        service, audio_format = _checked(state, body.input, body.response_format, body.speed)
        try:
            audio = base64.b64decode(body.ref_audio, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "ref_audio must be base64", INVALID_AUDIO, "ref_audio") from None
        if not audio or len(audio) > MAX_REFERENCE_BYTES:
            raise ApiError(
                400,
                f"ref_audio must hold 1 byte to {MAX_REFERENCE_BYTES // 2**20} MB",
                INVALID_AUDIO,
                "ref_audio",
            )
        transcript = None if body.x_vector_only_mode else (body.ref_text or "").strip() or None
        check_not_busy(state)
        asked = ServiceRequest(
            VoiceRequest(language=body.language), body.input, "text", describe_client(peer(request), "http")
        )
        try:
            service.check_text(body.input)  # before the clone: it runs the encoders
            spoken = service.speak(asked, await service.clone(audio, transcript))
        except (RequestError, EngineError) as err:
            raise api_error(err) from None
        return _respond(state, service, spoken, audio_format, body.speed, body.stream_format, {})

    return app


def _respond(
    state: ApiState,
    service: SpeechService,
    spoken: Speech,
    audio_format: AudioFormat,
    speed: float,
    stream_format: str,
    headers: dict[str, str],
) -> StreamingResponse:
    check_not_busy(state)
    audio = _encoded(state, spoken, AudioEncoder(audio_format, service.sample_rate, speed))
    if stream_format == "sse":
        return StreamingResponse(sse_events(audio), media_type="text/event-stream", headers=headers)
    return StreamingResponse(audio, media_type=audio_format.content_type, headers=headers)


async def _encoded(state: ApiState, spoken: Speech, encoder: AudioEncoder) -> AsyncGenerator[bytes, None]:
    """Encoded audio as it is synthesized; the request holds a slot while this runs."""
    state.active += 1
    try:
        async with spoken:
            async for pcm in spoken:
                data = encoder.encode(pcm)
                if data:
                    yield data
            yield encoder.finish()
    except (RequestError, EngineError) as err:
        _LOGGER.warning("HTTP synthesis failed after the response started: %s", err)
    except asyncio.CancelledError:
        raise
    except Exception as err:
        _LOGGER.exception("HTTP synthesis failed: %s", short_failure(err))
    finally:
        state.active -= 1


def _audio_format(name: str) -> AudioFormat:
    audio_format = FORMATS.get(name.strip().lower())
    if audio_format is None:
        raise ApiError(
            400,
            f"response_format {name!r} is not supported; use {', '.join(FORMATS)}",
            UNSUPPORTED_FORMAT,
            "response_format",
        )
    return audio_format


def _checked(
    state: ApiState, text: str, response_format: str, speed: float
) -> tuple[SpeechService, AudioFormat]:
    """What every speech route checks first: a loaded model, some input, a known format, a speed."""
    service = state.loaded()
    if not text.strip():
        raise ApiError(400, "input is empty; send the text to speak", EMPTY_INPUT, "input")
    audio_format = _audio_format(response_format)
    if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise ApiError(
            400, f"speed must be between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}", INVALID_SPEED, "speed"
        )
    return service, audio_format


def _voice_name(voice: str | dict[str, Any] | None) -> str | None:
    """OpenAI sends a name, or (newer clients) {"id": name}."""
    if isinstance(voice, dict):
        voice = voice.get("id") or voice.get("name")
    if voice is not None and not isinstance(voice, str):
        raise ApiError(400, "voice must be a name", INVALID_REQUEST, "voice")
    return voice.strip() if voice else None

"""The voice studio's routes: voices cloned or designed in the browser, kept in the voices directory.

A saved voice is what a person would have written by hand (voices/store.py): an entry of voices.json and,
for a clone, its WAV file. The server reads it back at once, so `describe` and the voice list show it
when the response returns; Home Assistant asks for the list again when its integration reloads.

The routes that write (save, rename, delete) are off unless --http-api-key is set, because anyone who can
reach the port could otherwise fill the disk or replace the voices; with a key they need it like every
route (a --http-trusted-peer, such as Home Assistant's ingress proxy, which authenticates the user
itself, needs none). Uploads are bounded before they are read whole (StudioGate), decoded in a child
process (uploads.py), and a preview speaks through the same cloning path as /v1/audio/voice-clone.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..languages import bcp47_codes, to_bcp47, to_model_language
from ..requests import (
    CANNOT_CLONE,
    INVALID_AUDIO,
    UNKNOWN_VOICE,
    UNSUPPORTED_LANGUAGE,
    EngineError,
    RequestError,
    VoiceRequest,
    describe_client,
)
from ..requests import SpeechRequest as ServiceRequest
from ..service import NAME_SHOWN, Speech, SpeechService
from ..voices.store import BAD_NAME, BROKEN, EXISTS, MISSING, StoreError, VoiceStore, check_name
from ..voices.voice import Voice
from .errors import (
    INVALID_REQUEST,
    INVALID_VOICE_NAME,
    UPLOAD_TOO_LARGE,
    VOICE_EXISTS,
    VOICE_NOT_EDITABLE,
    VOICE_SAVE_FAILED,
    VOICE_WRITES_OFF,
    VOICES_FILE_BROKEN,
    ApiError,
    api_error,
)
from .state import ApiState, check_not_busy, peer, voice_items
from .uploads import Decoder, UploadError, UploadLimits, pcm_wav, suggest, wav_bytes, window

_LOGGER = logging.getLogger(__name__)

SAMPLE_TEXT = "Hello! This is how my new voice sounds. I hope you like it."
MAX_INSTRUCT_CHARS = 1000
MAX_TRANSCRIPT_CHARS = 1000
MAX_DESCRIPTION_CHARS = 200
BODY_SECONDS = 60.0  # to send an upload, after which the request is dropped (408)
FORM_SLACK = 64 * 1024  # the multipart body's other fields and boundaries, beyond the audio
DRAIN_FACTOR = 4  # an upload this many times too large is not read to its end before the 413
UPLOAD_PATHS = ("/v1/voices", "/v1/voices/clip", "/v1/voices/preview")
MODEL_KIND_NAMES = {"base": "Base", "voice_design": "VoiceDesign", "custom_voice": "CustomVoice"}


@dataclass(frozen=True)
class VoiceForm:
    """The form fields a clone or a design is made from, shared by the preview and the save."""

    audio: UploadFile | None
    start: float | None
    end: float | None
    transcript: str | None
    x_vector_only: bool
    instruct: str | None

    def said(self) -> str | None:
        """The transcript a clone is made with: none in x-vector mode (checked otherwise)."""
        return None if self.x_vector_only else _text(self.transcript, "transcript", MAX_TRANSCRIPT_CHARS)


def voice_form(
    audio: Annotated[UploadFile | None, File(description="Base models: the recording to clone")] = None,
    start: Annotated[float | None, Form(description="where the part to clone starts, in s")] = None,
    end: Annotated[float | None, Form(description="where it ends, in s")] = None,
    transcript: Annotated[str | None, Form(description="the words spoken in that part")] = None,
    x_vector_only: Annotated[bool, Form(description="use only the speaker embedding")] = False,
    instruct: Annotated[str | None, Form(description="VoiceDesign models: the voice in words")] = None,
) -> VoiceForm:
    return VoiceForm(audio, start, end, transcript, x_vector_only, instruct)


class StudioLimits(BaseModel):
    max_bytes: int = Field(description="largest upload, in bytes")
    min_seconds: int = Field(description="shortest part of a recording a voice is made of")
    max_seconds: int = Field(description="longest part of a recording a voice is made of")
    max_upload_seconds: int = Field(description="longest recording that part is chosen from")


class StudioInfo(BaseModel):
    writes: bool = Field(description="whether voices can be saved, renamed and deleted")
    why: str | None = Field(description="why not, and how to turn it on")
    model_kind: str = Field(
        description="base (clones from audio), voice_design (from an instruct), custom_voice"
    )
    languages: list[str] = Field(description="the model's languages as BCP-47 codes")
    limits: StudioLimits


class ClipInfo(BaseModel):
    duration: float = Field(description="length of the recording, in seconds")
    sample_rate: int = Field(description="the rate it was recorded at")
    start: float = Field(description="suggested start of the part to clone, in seconds")
    end: float = Field(description="suggested end")


class VoiceChange(BaseModel):
    """A rename and/or a new description of a voices.json voice."""

    name: str | None = Field(None, description="the new name")
    description: str | None = Field(None, description='what clients show for it ("" removes it)')


class Studio:
    """The studio's state beside the API's: its limits, the upload decoder, the voice store."""

    def __init__(self, state: ApiState, limits: UploadLimits | None = None) -> None:
        self.state = state
        self.limits = limits or UploadLimits()
        self.decoder = Decoder(self.limits)
        self._store: VoiceStore | None = None
        self.writing = asyncio.Lock()  # one save, rename or delete at a time, reload included
        state.on_ready.append(self.announce)

    def store(self) -> VoiceStore | None:
        service = self.state.service
        if service is None or service.options.voices_dir is None:
            return None
        if self._store is None:
            self._store = VoiceStore(service.options.voices_dir)
        return self._store

    def writes_off(self) -> str | None:
        """Why voices cannot be saved now, with the fix; None when they can (or the model still loads)."""
        service = self.state.service
        if service is None:
            return None
        missing = []
        if not self.state.api_key:
            missing.append("--http-api-key KEY (or QWEN3TTS_HTTP_API_KEY)")
        if service.options.voices_dir is None:
            missing.append("--voices-dir DIR (or QWEN3TTS_VOICES_DIR)")
        if missing:
            return f"Saving voices is off: start the server with {' and '.join(missing)} to turn it on"
        store = self.store()
        if store is not None and not store.writable():
            return (
                f"Saving voices is off: this user cannot write to the voices directory {store.directory} "
                "or its voices.json; fix their permissions"
            )
        return None

    def announce(self, service: SpeechService) -> None:
        """The one start-up line saying whether voices can be saved, and how to turn it on."""
        reason = self.writes_off()
        if reason is not None:
            _LOGGER.info("Voice studio: %s", reason)
            return
        store = self.store()
        assert store is not None
        store.sweep()
        trusted = f" (none from {self.state.trusted_peer})" if self.state.trusted_peer else ""
        _LOGGER.info(
            "Voice studio: saving voices in %s; the routes that write need the API key%s",
            store.directory,
            trusted,
        )

    def refusal(self) -> ApiError | None:
        reason = self.writes_off()
        return None if reason is None else ApiError(403, reason, VOICE_WRITES_OFF, kind="permission_error")

    def editable(self) -> list[str]:
        store = self.store()
        return store.names() if store is not None else []

    async def audio_of(self, audio: UploadFile | None, start: float | None, end: float | None) -> bytes:
        """The part of the upload a voice is made of, as the 24 kHz mono 16-bit WAV a voice keeps."""
        if audio is None:
            raise ApiError(400, "audio: send the recording to clone (a file field)", INVALID_REQUEST, "audio")
        data = await audio.read(self.limits.max_bytes + 1)
        try:
            decoded = await self.decoder.decode(data)
            return wav_bytes(window(decoded, self.limits, start, end))
        except UploadError as err:
            raise _upload_error(err) from None


def _upload_error(err: UploadError) -> ApiError:
    code = UPLOAD_TOO_LARGE if err.status == 413 else INVALID_AUDIO
    return ApiError(err.status, str(err), code, err.param)


def studio_routes(studio: Studio) -> APIRouter:
    """The routes of the voice studio (and of the page that uses them), documented under "voice studio"."""
    router = APIRouter(tags=["voice studio"])
    state = studio.state
    limits = studio.limits

    @router.get("/v1/studio", response_model=StudioInfo)
    async def about() -> dict[str, Any]:
        """What the studio can do here: saving on or off (and why), the model's kind, languages, limits."""
        service = state.loaded()
        why = studio.writes_off()
        return {
            "writes": why is None,
            "why": why,
            "model_kind": service.model_kind,
            "languages": bcp47_codes(service.languages()),
            "limits": {
                "max_bytes": limits.max_bytes,
                "min_seconds": limits.min_seconds,
                "max_seconds": limits.max_seconds,
                "max_upload_seconds": limits.max_upload_seconds,
            },
        }

    @router.post("/v1/voices/clip", response_model=ClipInfo)
    async def clip(audio: Annotated[UploadFile, File(description="a recording")]) -> dict[str, Any]:
        """The length of a recording and the best part of it to clone (the most speech). Saves nothing."""
        state.loaded()
        data = await audio.read(limits.max_bytes + 1)
        try:
            decoded = await studio.decoder.decode(data)
        except UploadError as err:
            raise _upload_error(err) from None
        start, end = suggest(decoded, limits)
        return {
            "duration": round(decoded.duration, 3),
            "sample_rate": decoded.source_rate,
            "start": start,
            "end": end,
        }

    @router.post(
        "/v1/voices/preview",
        response_class=Response,
        responses={200: {"content": {"audio/wav": {}}, "description": "the sample, a complete WAV"}},
    )
    async def preview(
        request: Request,
        form: Annotated[VoiceForm, Depends(voice_form)],
        input: Annotated[str | None, Form(description="text to speak; default: a sample sentence")] = None,
        language: Annotated[str | None, Form(description="en, de, ...; default: detected")] = None,
    ) -> Response:
        """A sample of a voice before it is saved: cloned from the upload, or designed from instruct."""
        service = state.loaded()
        text = (input or "").strip() or SAMPLE_TEXT
        try:
            service.check_text(text)  # before a clone: it runs the encoders
        except RequestError as err:
            raise api_error(err) from None
        voice, _ = await _voice(studio, service, form)
        asked = ServiceRequest(
            VoiceRequest(language=(language or "").strip() or None),
            text,
            "text",
            describe_client(peer(request), "http studio"),
        )
        check_not_busy(state)
        try:
            spoken = service.speak(asked, voice)
        except (RequestError, EngineError) as err:
            raise api_error(err) from None
        pcm = await _whole(state, spoken)
        return Response(pcm_wav(pcm, service.sample_rate), media_type="audio/wav")

    @router.post("/v1/voices", status_code=201)
    async def save(
        name: Annotated[str, Form(description="the voice's name: letters, digits, _ . -")],
        form: Annotated[VoiceForm, Depends(voice_form)],
        language: Annotated[str | None, Form(description="the language it speaks (en, de, ...)")] = None,
        description: Annotated[str | None, Form(description="what clients show for it")] = None,
    ) -> JSONResponse:
        """Save a voice into the voices directory; it is listed (and in `describe`) when this returns."""
        service = state.loaded()
        _refuse_if_off(studio)
        store = studio.store()
        assert store is not None
        _checked_name(name)
        taken = [voice.name for voice in service.voices()]
        if name.casefold() in {other.casefold() for other in [*taken, *store.names()]}:
            raise ApiError(
                409, f"A voice named {name!r} exists already; choose another name", VOICE_EXISTS, "name"
            )
        entry: dict[str, Any] = {}
        code = _language_code(service, language)
        text_description = _text(description, "description", MAX_DESCRIPTION_CHARS)
        async with studio.writing:
            voice, reference = await _voice(studio, service, form)
            if reference is not None:
                said = form.said()
                if said:
                    entry["transcript"] = said
            else:
                entry["instruct"] = voice.instruct
            if code:
                entry["language"] = code
            if text_description:
                entry["description"] = text_description
            await _stored(store.add, name, entry, reference, taken)
            saved = await _reloaded(service, name)
            if saved is None:
                await _stored(store.delete, name)
                await _reload(service)
                raise ApiError(
                    400,
                    f"Voice {name!r} was saved but the model could not load it (the server log says why); "
                    "it was removed again",
                    INVALID_AUDIO if reference is not None else INVALID_REQUEST,
                )
        return JSONResponse({"voice": _item(studio, service, saved)}, status_code=201)

    @router.patch("/v1/voices/{name}")
    async def change(name: str, body: VoiceChange) -> dict[str, Any]:
        """Rename a voice of voices.json and/or change its description."""
        service = state.loaded()
        _refuse_if_off(studio)
        store = studio.store()
        assert store is not None
        new_name = body.name.strip() if body.name is not None else None
        if new_name is not None:
            _checked_name(new_name)
        text_description = None
        if body.description is not None:
            text_description = _text(body.description, "description", MAX_DESCRIPTION_CHARS) or ""
        async with studio.writing:
            current = _editable_name(studio, service, name)
            if new_name is not None and new_name.casefold() != current.casefold():
                others = [
                    voice.name for voice in service.voices() if voice.name.casefold() != current.casefold()
                ]
                if new_name.casefold() in {other.casefold() for other in others}:
                    raise ApiError(
                        409,
                        f"A voice named {new_name!r} exists already; choose another name",
                        VOICE_EXISTS,
                        "name",
                    )
            renamed = await _stored(store.rename, current, new_name, text_description)
            saved = await _reloaded(service, renamed)
        if saved is None:
            raise ApiError(
                500,
                f"Voice {renamed!r} was changed but is not loaded (the server log says why)",
                VOICE_SAVE_FAILED,
                kind="server_error",
            )
        return {"voice": _item(studio, service, saved)}

    @router.delete("/v1/voices/{name}", status_code=204)
    async def delete(name: str) -> Response:
        """Delete a voice of voices.json, and its audio file unless another voice uses it."""
        service = state.loaded()
        _refuse_if_off(studio)
        store = studio.store()
        assert store is not None
        async with studio.writing:
            current = _editable_name(studio, service, name)
            if service.model_kind == "base" and [v.name.casefold() for v in service.voices()] == [
                current.casefold()
            ]:
                raise ApiError(
                    409,
                    f"{current!r} is the last voice of this Base model, which cannot start without one; "
                    "save another voice first",
                    VOICE_EXISTS,
                    "name",
                )
            await _stored(store.delete, current)
            await _reload(service)
        return Response(status_code=204)

    return router


class StudioGate:
    """ASGI middleware in front of the studio's routes, before any body is read.

    The routes that write answer 403 at once while saving is off. An upload's body is read here, up to
    the limit and within BODY_SECONDS, and handed on whole; a larger one gets 413 (read to its end when
    it is not far over, so that the client, still sending, sees the answer rather than a reset).
    """

    def __init__(self, app: Any, studio: Studio) -> None:
        self.app = app
        self.studio = studio

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        writes = (method == "POST" and path == "/v1/voices") or (
            method in ("PATCH", "DELETE") and path.startswith("/v1/voices/")
        )
        if writes and (refusal := self.studio.refusal()) is not None:
            await refusal.response()(scope, receive, send)
            return
        if method != "POST" or path not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        limit = self.studio.limits.max_bytes + FORM_SLACK
        too_large = ApiError(
            413,
            f"The upload is larger than {self.studio.limits.max_bytes // 2**20} MB; send a shorter recording",
            UPLOAD_TOO_LARGE,
            "audio",
        )
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit * DRAIN_FACTOR:
            await too_large.response()(scope, receive, send)
            return
        try:
            read = await asyncio.wait_for(_read_body(receive, limit), BODY_SECONDS)
        except asyncio.TimeoutError:
            message = f"The upload took longer than {BODY_SECONDS:g} s to arrive"
            await ApiError(408, message, INVALID_REQUEST).response()(scope, receive, send)
            return
        if read is None:  # the client left
            return
        body, size = read
        if size > limit:
            await too_large.response()(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _read_body(receive: Any, limit: int) -> tuple[bytes, int] | None:
    """The request body up to limit and how many bytes came, or None if the client left. Past limit
    the rest is drained, within a bound, so that the client hears the 413."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body", False) or size > limit * DRAIN_FACTOR:
            break
    return b"".join(chunks), size


async def _voice(studio: Studio, service: SpeechService, form: VoiceForm) -> tuple[Voice, bytes | None]:
    """The voice a preview or a save makes, and for a clone the WAV it is made of."""
    kind = service.model_kind
    audio, instruct = form.audio, form.instruct
    described = _text(instruct, "instruct", MAX_INSTRUCT_CHARS)
    if kind == "base":
        if described:
            raise ApiError(
                400,
                "instruct: a Base model clones voices from a recording; send audio (and its transcript)",
                INVALID_REQUEST,
                "instruct",
            )
        said = form.said()
        reference = await studio.audio_of(audio, form.start, form.end)
        try:
            return await service.clone(reference, said), reference
        except (RequestError, EngineError) as err:
            raise api_error(err) from None
    if kind == "voice_design":
        if audio is not None:
            raise ApiError(
                400,
                "audio: a VoiceDesign model makes voices from a description; send instruct instead",
                INVALID_REQUEST,
                "audio",
            )
        if not described:
            raise ApiError(
                400,
                'instruct: describe the voice in words, e.g. "A warm, calm, middle-aged female voice"',
                INVALID_REQUEST,
                "instruct",
            )
        return Voice("designed", "design", described, instruct=described), None
    raise ApiError(
        400,
        f"This {MODEL_KIND_NAMES.get(kind, kind)} model speaks its preset speakers only; load a Base model "
        "to clone voices or a VoiceDesign model to design them",
        CANNOT_CLONE,
    )


async def _whole(state: ApiState, spoken: Speech) -> bytes:
    """All the PCM of a Speech; the request holds a synthesis slot meanwhile."""
    state.active += 1
    try:
        chunks = []
        async with spoken:
            async for pcm in spoken:
                chunks.append(pcm)
        return b"".join(chunks)
    except (RequestError, EngineError) as err:
        raise api_error(err) from None
    finally:
        state.active -= 1


def _text(value: str | None, field: str, longest: int) -> str | None:
    """A text field, stripped (None when empty), bounded, and storable as UTF-8."""
    text = (value or "").strip()
    if len(text) > longest:
        raise ApiError(400, f"{field} is longer than {longest} characters", INVALID_REQUEST, field)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{field} is not valid Unicode", INVALID_REQUEST, field) from None
    return text or None


def _checked_name(name: str) -> None:
    try:
        check_name(name)
    except StoreError as err:
        raise ApiError(400, str(err), INVALID_VOICE_NAME, "name") from None


def _language_code(service: SpeechService, raw: str | None) -> str | None:
    """A voice's language as voices.json keeps it ("en"; a dialect by its model name); None for none."""
    if not raw or not raw.strip():
        return None
    languages = tuple(service.languages())
    language = to_model_language(raw, languages)
    if language is None:
        raise ApiError(
            400,
            f"Language {raw[:NAME_SHOWN]!r} is not one this model speaks; use one of "
            f"{', '.join(bcp47_codes(languages))}",
            UNSUPPORTED_LANGUAGE,
            "language",
        )
    if language == "auto":
        return None
    code = to_bcp47(language)
    return code if to_model_language(code, languages) == language else language


def _refuse_if_off(studio: Studio) -> None:
    refusal = studio.refusal()
    if refusal is not None:
        raise refusal


def _editable_name(studio: Studio, service: SpeechService, name: str) -> str:
    """The voices.json key of name (any case); a clear 400 for a voice defined elsewhere, else 404."""
    store = studio.store()
    assert store is not None
    try:
        voices = store.document()["voices"]
    except StoreError as err:
        raise ApiError(409, str(err), VOICES_FILE_BROKEN) from None
    for key in voices:
        if not key.startswith("_") and key.casefold() == name.casefold():
            return key
    if any(voice.name.casefold() == name.casefold() for voice in service.voices()):
        raise ApiError(
            400,
            f"Voice {name!r} is not defined in voices.json (it is a preset or a per-file voice), so the "
            "studio cannot change it; change its files by hand",
            VOICE_NOT_EDITABLE,
            "name",
        )
    raise ApiError(
        404, f"Unknown voice {name[:NAME_SHOWN]!r}; GET /v1/voices lists them", UNKNOWN_VOICE, "name"
    )


STORE_ERRORS = {
    BAD_NAME: (400, INVALID_VOICE_NAME),
    EXISTS: (409, VOICE_EXISTS),
    MISSING: (404, UNKNOWN_VOICE),
    BROKEN: (409, VOICES_FILE_BROKEN),
}


async def _stored(change: Any, *args: Any) -> Any:
    """A change of the store, off the event loop (it syncs to disk), its refusals as HTTP errors."""
    try:
        return await asyncio.to_thread(change, *args)
    except StoreError as err:
        status, code = STORE_ERRORS[err.kind]
        raise ApiError(status, str(err), code, "name") from None
    except OSError as err:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        _LOGGER.warning("Could not change the voices directory: %s", err)
        raise ApiError(
            507 if full else 500,
            f"The voices directory could not be written ({err.strerror or err}); it is as it was",
            VOICE_SAVE_FAILED,
            kind="server_error",
        ) from None


async def _reload(service: SpeechService) -> None:
    try:
        await service.reload_voices()
    except Exception:
        _LOGGER.exception("Reloading the voices failed; the voices stay as they were")


async def _reloaded(service: SpeechService, name: str) -> Voice | None:
    """The voice named name once the voices were read again, or None if it did not load."""
    await _reload(service)
    return next((voice for voice in service.voices() if voice.name.casefold() == name.casefold()), None)


def _item(studio: Studio, service: SpeechService, voice: Voice) -> dict[str, Any]:
    items = voice_items(service, studio.editable())
    return next(item for item in items if item["name"] == voice.name)

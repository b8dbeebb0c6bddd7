"""Entry point: flags -> Settings -> malloc -> engine -> speech service -> the front ends asked for
(Wyoming, HTTP).

A start-up problem (a bad flag, a taken port, a missing model) ends the process with one line naming the fix.
Nothing imports torch before the allocator is settled (allocator.py may start the process again on
tcmalloc): the engine, the service and the front ends are imported where they are first needed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from .allocator import AllocatorError, conflict, describe_allocator, restart_with_tcmalloc
from .engine.model_files import ModelError
from .engine.registry import create_engine
from .languages import to_model_language
from .requests import EngineError
from .settings import Settings, SettingsError, parse_settings
from .worker import InferenceWorker

if TYPE_CHECKING:
    from .engine import Engine
    from .service import SpeechOptions, SpeechService

_LOGGER = logging.getLogger("wyoming_qwen3tts")


def warm_up(engine: Engine, service: SpeechService, rows: int) -> None:
    """One short sentence in the voice and language a request gets that names neither (so the talker
    keeps that prompt beginning too: engine/pytorch/prefixes.py), then every batch size up to rows."""
    _LOGGER.info("Warming up")
    voice = service.default_voice()
    engine.warmup(rows, voice, service.resolve_language(voice, None))


def speech_options(settings: Settings, engine: Engine) -> SpeechOptions:
    """The service's options, with --voice and --language checked against the loaded model."""
    from .service import SpeechOptions

    speech = settings.speech
    names = [voice.name for voice in engine.voices()]
    if speech.voice is not None and speech.voice.lower() not in {n.lower() for n in names}:
        raise SettingsError(
            f"--voice {speech.voice!r} is not a voice of this model; choose one of: {', '.join(names)}"
        )
    language = to_model_language(speech.language, list(engine.languages()))
    if language is None:
        raise SettingsError(
            f"--language {speech.language!r} is not spoken by this model; use auto or one of: "
            f"{', '.join(engine.languages())}"
        )
    return SpeechOptions(
        default_voice=speech.voice,
        default_language=language,
        max_text_chars=speech.max_text_chars,
        normalize=speech.normalize,
        voices_dir=settings.engine.voices_dir,
        look_ahead=speech.look_ahead if speech.max_batch > 1 else 0,
    )


async def serve(settings: Settings) -> None:
    """Load the engine, then serve Wyoming clients (and the HTTP API if asked) until cancelled."""
    from .service import SpeechService  # these import torch
    from .wyoming.server import check_wyoming_address, serve_wyoming

    worker = InferenceWorker(max_batch=max(1, settings.speech.max_batch))
    http = None
    watching = None
    try:
        if settings.http.uri:
            from .http.server import start_http  # FastAPI and PyAV are imported only when the API is on

            # Up before the model loads, so /health can say "loading" meanwhile.
            http = await start_http(
                settings.http, settings.engine.model, settings.backend, settings.wyoming.shutdown_grace
            )
        check_wyoming_address(settings.wyoming.uri)  # before the minutes a model may take to load
        # All torch work, loading and warm-up included, runs on the one worker thread: each thread
        # that calls into torch gets its own OpenMP team, and a second team spinning beside the first
        # slows synthesis down (docs/speed.md, "Design measurements").
        engine = await worker.run(create_engine, settings)
        service = SpeechService(engine, speech_options(settings, engine), worker)
        if settings.warmup:
            await worker.run(warm_up, engine, service, max(1, settings.speech.max_batch))
        if http is not None:
            http.state.ready(service)
        if settings.engine.voices_dir is not None and settings.engine.voices_reload_interval > 0:
            watching = asyncio.create_task(service.watch_voices(settings.engine.voices_reload_interval))
        await serve_wyoming(settings.wyoming, service)
    finally:
        if watching is not None:
            watching.cancel()
        if http is not None:
            await http.stop()
        await worker.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run the server; return the process exit code. Run from its own command line (argv None), it may
    first start itself again on tcmalloc (allocator.py)."""
    try:
        settings = parse_settings(argv)
        malloc_conflict = conflict(settings.backend, settings.torch.predictor)
        if argv is None:
            restart_with_tcmalloc(settings.engine.allocator, malloc_conflict)
    except (SettingsError, AllocatorError) as err:
        print(f"wyoming-qwen3tts: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if settings.log.debug else logging.INFO, format=settings.log.format
    )
    if not settings.log.debug:
        for noisy in ("transformers", "urllib3", "numba", "httpx", "filelock", "uvicorn.error"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    _LOGGER.info("Memory allocator: %s", describe_allocator(settings.engine.allocator, malloc_conflict))
    try:
        asyncio.run(serve(settings))
    except (SettingsError, ModelError, EngineError) as err:
        _LOGGER.debug("Start-up failed", exc_info=True)
        print(f"wyoming-qwen3tts: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

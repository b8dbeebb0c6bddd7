"""Speed and memory of each engine setting against stock qwen-tts, measured in one run.

    script/benchmark [--size real-1.7b] [--model DIR] [--frames 48] [--threads 2] [--settings a,b,...]

Without --model it builds (once, cached under data/benchmark/) a random-weight
CustomVoice model with the real 0.6B (or --size real-1.7b) dimensions from the public configs: its
compute per frame is the real one. Greedy decoding on that model never emits
EOS, so every setting generates exactly --frames frames. Each setting runs in
its own process so that load time and peak RSS are its own; the machines are
shared and noisy, so compare the ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FRAME_SECONDS = 0.08
TEXT = (
    "The weather in the kitchen is sunny today, with a gentle breeze from the west and a high of "
    "twenty one degrees."
)
SIZES = ("real-0.6b", "real-1.7b")  # random weights with the real dimensions of each size


def model_dir_of(size: str) -> Path:
    return Path(f"data/benchmark/{size}-custom_voice")


DEFAULT_MODEL_DIR = model_dir_of("real-0.6b")
IPEX_PYTHON = Path(__file__).resolve().parent.parent / ".venv-ipex" / "bin" / "python"
BASELINE = "stock-float32"


@dataclass(frozen=True)
class BenchmarkSetting:
    """One row of the table: which path (stock qwen-tts or our engine) with which weights."""

    name: str
    path: str  # "stock", "engine", or "server" (python -m wyoming_qwen3tts over loopback)
    dtype: str
    quantize: str = "none"
    weights: str = ""  # OpenVINO export weights; empty for the PyTorch backend
    http: bool = False  # server rows: time the HTTP API (pcm over /v1/audio/speech) after a Wyoming request
    ipex: bool = False  # --backend ipex
    torch28: bool = False  # run in .venv-ipex (torch 2.8, script/setup --ipex); every ipex row does
    compile: bool = False  # --compile (engine/pytorch/compiled_steps.py); its compiling counts in load s
    predictor: str = "pytorch"  # --predictor: the code predictor on PyTorch or an OpenVINO export of it
    trace: bool = True  # --trace-steps (engine/pytorch/traced_steps.py); False: the steps run eagerly
    fused: bool = True  # --fused-steps (engine/pytorch/fused_steps.py); False: traced (or eager) steps
    huge_pages: bool = True  # --huge-pages (memory.py); False: the model stays on 4 KB pages
    greedy: bool = True  # the codes' argmax (repeatable); False: drawn as the server draws them by default
    codec_thread: bool = True  # --codec-thread (engine/codec_thread.py); False: the codec decodes in turn
    int8_kernel: str = "auto"  # --int8-kernel (engine/pytorch/quantize.py)

    @property
    def backend(self) -> str:
        return "openvino" if self.weights else "ipex" if self.ipex else "pytorch"

    @property
    def python(self) -> Path | None:
        """The interpreter of .venv-ipex for the rows that run there, else None (this one)."""
        return IPEX_PYTHON if self.ipex or self.torch28 else None


SETTINGS = {
    s.name: s
    for s in (
        BenchmarkSetting("stock-float32", "stock", "float32"),
        BenchmarkSetting("stock-bfloat16", "stock", "bfloat16"),
        BenchmarkSetting("engine-float32", "engine", "float32"),
        BenchmarkSetting("engine-bfloat16", "engine", "bfloat16"),
        BenchmarkSetting("engine-float32-compiled", "engine", "float32", compile=True),
        BenchmarkSetting("engine-bfloat16-compiled", "engine", "bfloat16", compile=True),
        BenchmarkSetting("engine-int8", "engine", "auto", "int8"),
        BenchmarkSetting("engine-int8-fbgemm", "engine", "auto", "int8", int8_kernel="dynamic"),
        BenchmarkSetting("engine-int8-unfused", "engine", "auto", "int8", fused=False),
        BenchmarkSetting("engine-int8-untraced", "engine", "auto", "int8", trace=False, fused=False),
        BenchmarkSetting("engine-int8-small-pages", "engine", "auto", "int8", huge_pages=False),
        BenchmarkSetting("engine-int8-sampled", "engine", "auto", "int8", greedy=False),
        BenchmarkSetting("engine-int8-codec-in-turn", "engine", "auto", "int8", codec_thread=False),
        BenchmarkSetting("engine-int8-ov-predictor", "engine", "auto", "int8", predictor="openvino-int4"),
        BenchmarkSetting("server-auto", "server", "auto", "auto"),
        BenchmarkSetting("server-http", "server", "auto", "auto", http=True),
        BenchmarkSetting("openvino-fp16", "engine", "auto", weights="fp16"),
        BenchmarkSetting("openvino-int8", "engine", "auto", weights="int8"),
        BenchmarkSetting("openvino-int4", "engine", "auto", weights="int4"),
        BenchmarkSetting("server-openvino-int8", "server", "auto", weights="int8"),
        # In .venv-ipex: the pytorch backend on its torch 2.8 (what IPEX adds is the difference), then IPEX.
        BenchmarkSetting("torch2.8-float32", "engine", "float32", torch28=True),
        BenchmarkSetting("torch2.8-int8", "engine", "auto", "int8", torch28=True),
        BenchmarkSetting("ipex-float32", "engine", "float32", ipex=True),
        BenchmarkSetting("ipex-bfloat16", "engine", "bfloat16", ipex=True),  # AVX-512 or AVX-NE-CONVERT only
        BenchmarkSetting("ipex-int8", "engine", "float32", "int8", ipex=True),  # weight-only: very slow here
        BenchmarkSetting("server-ipex", "server", "auto", "auto", ipex=True),
    )
}
# ipex-int8 takes many minutes on one-token steps (see engine/pytorch/ipex.py) and ipex-bfloat16 needs
# AVX-512: both only when named.
DEFAULT_SETTINGS = [name for name in SETTINGS if name not in ("ipex-int8", "ipex-bfloat16")]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_isa() -> str:
    """The instruction sets the PyTorch and IPEX kernels choose by, present and missing."""
    from wyoming_qwen3tts.cpu import cpu_flags

    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    flags = cpu_flags()
    has = [f for f in wanted if f in flags]
    return f"{' '.join(has) or 'none'} (no {', '.join(f for f in wanted if f not in flags) or '-'})"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def measure_stock(setting: BenchmarkSetting, model_dir: Path, frames: int, threads: int) -> dict:
    """qwen-tts's own generate_custom_voice: audio exists only when it returns."""
    import torch

    from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts

    torch.set_num_threads(threads)
    qwen_tts = import_qwen_tts()
    started = time.perf_counter()
    tts = qwen_tts.Qwen3TTSModel.from_pretrained(str(model_dir), dtype=getattr(torch, setting.dtype))
    load_s = time.perf_counter() - started
    speaker = sorted(tts.model.get_supported_speakers())[0]

    def run(n: int) -> int:
        wavs, _ = tts.generate_custom_voice(
            text=TEXT,
            speaker=speaker,
            language="english",
            do_sample=False,
            subtalker_dosample=False,
            max_new_tokens=n + 1,  # generate() completes max_new_tokens - 1 frames
        )
        return len(wavs[0])

    run(2)  # warm-up
    started = time.perf_counter()
    samples = run(frames)
    total_s = time.perf_counter() - started
    precision = f"{setting.dtype} everywhere (qwen-tts generate, audio at the end)"
    return {
        "load_s": load_s,
        "first_audio_s": total_s,
        "total_s": total_s,
        "samples": samples,
        "precision": precision,
    }


def measure_engine(setting: BenchmarkSetting, model_dir: Path, frames: int, threads: int) -> dict:
    """Our engine: streamed chunks, the first one timed separately."""
    from wyoming_qwen3tts.engine.registry import create_engine

    settings = engine_settings(setting, model_dir, frames, threads)
    started = time.perf_counter()
    engine = create_engine(settings, model_dir)
    precision = getattr(engine, "precision", None)
    load_s = time.perf_counter() - started
    voice = engine.voices()[0]
    for _ in engine.synthesize("Hi.", voice, "english"):  # warm-up
        pass
    started = time.perf_counter()
    first = None
    samples = 0
    for chunk in engine.synthesize(TEXT, voice, "english"):
        if first is None:
            first = time.perf_counter() - started
        samples += len(chunk) // 2
    total_s = time.perf_counter() - started
    from .floors import floors

    profile = profile_engine(engine, voice, frames)
    peak = peak_rss_gb()  # before the floors' 1 GiB read-bandwidth buffer
    result = {
        "profile_ms_per_frame": profile,
        "engine_peak_rss_gb": peak,
        "floors": floors(engine),
        "load_s": load_s,
        "first_audio_s": first,
        "total_s": total_s,
        "samples": samples,
        "precision": precision.describe() if precision else setting.dtype,
    }
    if setting.predictor != "pytorch":
        result["precision"] += f"; code predictor on OpenVINO ({setting.predictor.removeprefix('openvino-')})"
    if not setting.huge_pages:
        result["precision"] += "; memory on 4 KB pages (--no-huge-pages)"
    if not setting.greedy:
        result["precision"] += "; codes sampled (the server's default), not greedy"
    if setting.backend == "openvino":
        result["precision"] = openvino_notes(engine, settings, model_dir)
    return result


def engine_settings(setting: BenchmarkSetting, model_dir: Path, frames: int, threads: int):
    """The Settings of one row: greedy unless it samples, capped at the benchmark's frames; OpenVINO rows
    serve the export the parent process made, with a fresh compile cache."""
    from wyoming_qwen3tts.settings import EngineOptions, OpenVINOOptions, Settings, TorchOptions

    openvino = OpenVINOOptions(dtype=setting.dtype)
    if setting.backend == "openvino":
        openvino = dataclasses.replace(
            openvino,
            model_dir=export_dir_for(model_dir, setting.weights),
            cache_dir=Path(tempfile.mkdtemp(prefix="ov-cache-")),
        )
    return Settings(
        backend=setting.backend,
        engine=EngineOptions(
            model=str(model_dir),
            threads=threads,
            greedy=setting.greedy,
            max_frames=frames,
            warmup=False,
            huge_pages=setting.huge_pages,
            data_dir=model_dir.parent,  # a predictor export (--predictor openvino-*) beside the others
        ),
        torch=TorchOptions(
            dtype=setting.dtype,
            quantize=setting.quantize,
            compile=setting.compile,
            predictor=setting.predictor,
            trace_steps=setting.trace,
            fused_steps=setting.fused,
            codec_thread=setting.codec_thread,
            int8_kernel=setting.int8_kernel,
        ),
        openvino=openvino,
    )


def openvino_notes(engine, settings, model_dir: Path) -> str:
    """Weights, export time, and the load time of a second start that finds the compile cache."""
    from wyoming_qwen3tts.engine.openvino.export import read_manifest
    from wyoming_qwen3tts.engine.registry import create_engine

    manifest = read_manifest(settings.openvino.model_dir)
    peak = peak_rss_gb()  # before the second engine exists
    del engine
    import gc

    gc.collect()
    started = time.perf_counter()
    create_engine(settings, model_dir)
    cached = time.perf_counter() - started
    os.environ["BENCHMARK_PEAK_RSS_GB"] = f"{peak}"
    return (
        f"OpenVINO {manifest['weights']} weights; export {manifest.get('export_seconds', 0):.0f} s; "
        f"load with compile cache {cached:.1f} s"
    )


def export_dir_for(model_dir: Path, weights: str) -> Path:
    return model_dir.parent / "openvino" / f"{model_dir.name}-{weights}"


def ensure_export(model_dir: Path, weights: str) -> Path:
    """Export the benchmark model once per weight format (a child process, so its memory is its own)."""
    output = export_dir_for(model_dir, weights)
    if not (output / "manifest.json").is_file():
        print(f"Exporting {model_dir} to {output} ({weights})", file=sys.stderr)
        command = [sys.executable, "-m", "wyoming_qwen3tts.engine.openvino.export", "--model", str(model_dir)]
        subprocess.run([*command, "--output", str(output), "--weights", weights], check=True)
    return output


def ensure_predictor_export(model_dir: Path, predictors: set[str]) -> None:
    """Make the predictor exports these --predictor values run before any row is timed."""
    from wyoming_qwen3tts.engine.openvino.predictor import ensure_predictor_export as ensure

    for predictor in sorted(p for p in predictors if p.startswith("openvino-")):
        ensure(model_dir, model_dir.parent, predictor.removeprefix("openvino-"))


def profile_engine(engine, voice, frames: int) -> dict[str, float]:
    """Where the milliseconds of one frame go: talker step, 15 predictor steps, codec decode, the rest.
    Timed in turn: a codec thread (engine/codec_thread.py) is set aside meanwhile, as its decoding would
    overlap the steps."""
    spent: dict[str, float] = defaultdict(float)
    inside = [0]  # a step that calls another (a backend's rows step running its one-row step) counts once

    def timed(name: str, function):
        def run(*args, **kwargs):
            started = time.perf_counter()
            inside[0] += 1
            try:
                return function(*args, **kwargs)
            finally:
                inside[0] -= 1
                if not inside[0]:
                    spent[name] += time.perf_counter() - started

        return run

    steps = engine.parts.steps
    # The prompt runs through talker(), every frame through the rows steps (one row here).
    wrapped = {
        "talker": "talker step",
        "talker_rows": "talker step",
        "predictor": "code predictor (15 steps)",
        "predictor_rows": "code predictor (15 steps)",
    }
    for method, name in wrapped.items():
        setattr(steps, method, timed(name, getattr(steps, method)))
    make_decoder = engine._decoder_for

    def decoder_for(voice):
        decoder = make_decoder(voice)
        decoder.decode = timed("codec decode", decoder.decode)
        return decoder

    engine._decoder_for = decoder_for
    codec_thread = getattr(engine, "_codec_thread", None)
    engine._codec_thread = None
    try:
        started = time.perf_counter()
        samples = sum(len(chunk) // 2 for chunk in engine.synthesize(TEXT, voice, "english"))
        total = time.perf_counter() - started
    finally:
        for method in wrapped:
            delattr(steps, method)
        del engine._decoder_for
        engine._codec_thread = codec_thread
    count = max(1, round(samples / 1920))
    profile = {name: 1000 * seconds / count for name, seconds in spent.items()}
    profile["rest (sampling, embeddings, prompt)"] = 1000 * total / count - sum(profile.values())
    return profile


def measure_server(setting: BenchmarkSetting, model_dir: Path, frames: int, threads: int) -> dict:
    """The whole server as Home Assistant meets it: one-sentence synthesize to first audio-chunk."""
    import asyncio

    port, http_port = free_port(), free_port()
    command = server_command(model_dir, port, frames, threads)
    command += ["--dtype", setting.dtype, "--quantize", setting.quantize, "--predictor", setting.predictor]
    if setting.http:
        command += ["--http-uri", f"tcp://127.0.0.1:{http_port}"]
    if setting.ipex:
        command += ["--backend", "ipex"]
    if setting.backend == "openvino":
        command += [
            "--backend",
            "openvino",
            "--ov-model-dir",
            str(export_dir_for(model_dir, setting.weights)),
        ]
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    async def synthesize() -> tuple[float, float, int, float]:
        client = await _connect_when_up(port, server)
        load_s = time.perf_counter() - started
        first, total, samples = await _speak_once(client)
        return load_s, first, samples, total

    extra = {}
    try:
        load_s, first, samples, total = asyncio.run(synthesize())
        if setting.http:
            extra["wyoming_first_audio_s"] = first
            extra["http_mp3_first_audio_s"] = _http_speech(http_port, "mp3")[0]
            first, samples, total = _http_speech(http_port)
        peak_gb = process_memory_gb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(30)
    if setting.weights:
        precision = f"server, --backend openvino ({setting.weights} export)"
    elif setting.ipex:
        precision = f"server, --backend ipex --dtype {setting.dtype} --quantize {setting.quantize}"
    else:
        precision = f"server, --dtype {setting.dtype} --quantize {setting.quantize}"
    return {
        "load_s": load_s,
        "first_audio_s": first,
        "total_s": total,
        "samples": samples,
        "server_peak_rss_gb": peak_gb,
        "precision": precision + (", over HTTP (pcm)" if setting.http else ""),
        **extra,
    }


# The server modes --concurrency and --answer compare: continuous batching (the defaults) against one
# sentence at a time, interleaved, with no look-ahead (what the server did before batching).
MODES = {"batched": (), "max-batch 1": ("--max-batch", "1", "--look-ahead", "0")}


def measure_concurrency(
    model_dir: Path,
    frames: int,
    threads: int,
    levels: list[int],
    mode: str = "batched",
    backend: Sequence[str] = (),
    rounds: int = 1,
) -> list[dict]:
    """One PyTorch server; N clients at once speak the benchmark text, for each N in levels, the levels
    taken in turn `rounds` times (so a slow minute of a shared host falls on every level alike).

    Per level and round: each client's first audio and real-time factor, the audio seconds produced per
    second by all of them together, and the server's resident memory when the level starts (idle, its
    freed memory released) and at its peak.
    """
    import asyncio
    import threading

    from wyoming.client import AsyncTcpClient

    from wyoming_qwen3tts.worker import IDLE_RELEASE_SECONDS

    port = free_port()
    command = server_command(model_dir, port, frames, threads, (*MODES[mode], *backend))
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def resident_gb() -> float:
        return process_memory_gb(server.pid, "VmRSS")

    async def one_client() -> tuple[float, float, int]:
        client = AsyncTcpClient("127.0.0.1", port)
        await client.connect()
        return await _speak_once(client)

    async def first_request() -> None:  # the first after start is not measured
        await _speak_once(await _connect_when_up(port, server))

    results = []
    try:
        asyncio.run(first_request())
        for round_index, level in ((r, level) for r in range(rounds) for level in levels):
            # Each level from the idle server's memory (its idle release has run): its peak is then what
            # the level needs, not what glibc kept of the level before it.
            time.sleep(IDLE_RELEASE_SECONDS + 1.0)
            start_gb = resident_gb()
            peak = [start_gb]
            stop = threading.Event()

            def sample(peak: list[float] = peak, stop: threading.Event = stop) -> None:
                while not stop.wait(0.1):
                    peak.append(resident_gb())

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.perf_counter()

            async def together(level: int = level) -> list[tuple[float, float, int]]:
                return list(await asyncio.gather(*(one_client() for _ in range(level))))

            clients = asyncio.run(together())
            wall = time.perf_counter() - started
            stop.set()
            sampler.join()
            audio = [samples / 24000 for _, _, samples in clients]
            results.append(
                {
                    "mode": mode,
                    "clients": level,
                    "round": round_index + 1,
                    "first_audio_s": [round(first, 2) for first, _, _ in clients],
                    "rtf": [
                        round(total / seconds, 2)
                        for (_, total, _), seconds in zip(clients, audio, strict=True)
                    ],
                    "audio_s_per_s": round(sum(audio) / wall, 3),
                    "peak_rss_gb": round(max(peak), 3),
                    "idle_rss_gb": round(start_gb, 3),
                }
            )
    finally:
        server.terminate()
        server.wait(30)
    return results


def lower_median(items: Sequence[T], key: Callable[[T], float]) -> T:
    """The item with the median key (the lower middle of an even count)."""
    ranked = sorted(items, key=key)
    return ranked[(len(ranked) - 1) // 2]


def median_rounds(results: list[dict]) -> list[dict]:
    """Per mode and level, the round with the median audio seconds a second, with every round's figure
    beside it as "rounds"."""
    medians = []
    for key in dict.fromkeys((r["mode"], r["clients"]) for r in results):
        rounds = [r for r in results if (r["mode"], r["clients"]) == key]
        median = dict(lower_median(rounds, key=lambda r: r["audio_s_per_s"]))
        median["rounds"] = [r["audio_s_per_s"] for r in rounds]
        medians.append(median)
    return medians


def memory_per_utterance(results: list[dict]) -> float | None:
    """MB a further sentence in flight adds to the server's peak: per round, what the most clients took
    above the idle server against what one took, over the clients added; the median of the rounds. None
    without both levels (or from a run before levels started idle, which has no idle_rss_gb)."""

    def grew(r: dict) -> float:
        return r["peak_rss_gb"] - r["idle_rss_gb"]

    most = max(r["clients"] for r in results)
    per_round = []
    for round_index in sorted({r.get("round", 1) for r in results}):
        level = {r["clients"]: r for r in results if r.get("round", 1) == round_index}
        if most > 1 and 1 in level and most in level and "idle_rss_gb" in level[1]:
            per_round.append((grew(level[most]) - grew(level[1])) / (most - 1) * 1024)
    return lower_median(per_round, key=float) if per_round else None


def concurrency_table(results: list[dict]) -> str:
    """The median round of each level (median_rounds), its gain over one client's median round."""
    raw, results = results, median_rounds(results)
    several = any(len(r["rounds"]) > 1 for r in results)
    lines = [
        "| server | clients | first audio s (each) | real-time factor (each) | audio s per s, all together "
        "| vs 1 client | peak RSS GB |" + (" audio s per s, each round |" if several else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if several else ""),
    ]
    notes = []
    for mode in dict.fromkeys(r["mode"] for r in results):
        rows = [r for r in results if r["mode"] == mode]
        one = next((r for r in rows if r["clients"] == 1), None)
        for r in rows:
            firsts, rtfs = ", ".join(map(str, r["first_audio_s"])), ", ".join(map(str, r["rtf"]))
            gain = f"{r['audio_s_per_s'] / one['audio_s_per_s']:.2f}x" if one else "-"
            each = f" {', '.join(f'{x:.2f}' for x in r['rounds'])} |" if several else ""
            lines.append(
                f"| {mode} | {r['clients']} | {firsts} | {rtfs} | {r['audio_s_per_s']:.2f} | {gain} "
                f"| {r['peak_rss_gb']:.2f} |{each}"
            )
        if (per_utterance := memory_per_utterance([r for r in raw if r["mode"] == mode])) is not None:
            notes.append(f"{mode}: memory per further concurrent utterance {per_utterance:.0f} MB")
    return "\n".join(lines + ([""] + notes if notes else []))


ANSWER = [
    "Sure, here is the weather for today.",
    "It will be sunny in the morning with a light breeze from the west.",
    "Clouds come in after lunch, and there is a chance of rain around five.",
    "Take an umbrella if you go out this evening.",
]
WORDS_PER_SECOND = 20  # how fast an LLM's answer streams in, word by word, as Home Assistant forwards it


def measure_answer(
    model_dir: Path, frames: int, threads: int, mode: str, backend: Sequence[str] = ()
) -> dict:
    """One Wyoming client sends a four-sentence answer the way Home Assistant streams an LLM's reply
    (synthesize-start, word-sized chunks at WORDS_PER_SECOND, the compatibility synthesize, synthesize-stop)
    and plays the audio at real time from its first chunk: first audio, stall seconds (where the player
    ran dry) and the time to the last audio."""
    import asyncio

    from wyoming.audio import AudioChunk
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

    port = free_port()
    # The random model never says EOS: --max-frames gives every sentence the same length (48 frames each:
    # 15.4 s of audio in all, as in the measurement that asked for batching).
    command = server_command(model_dir, port, frames, threads, (*MODES[mode], *backend))
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    text = " ".join(ANSWER)

    async def answer() -> dict:
        await _speak_once(await _connect_when_up(port, server))  # the first request after start is not timed
        client = await _connect_when_up(port, server)
        started = time.perf_counter()
        arrivals: list[tuple[float, float]] = []  # (arrival time, seconds of audio)

        async def feed() -> None:
            await client.write_event(SynthesizeStart().event())
            for word in text.split(" "):
                await client.write_event(SynthesizeChunk(text=word + " ").event())
                await asyncio.sleep(1 / WORDS_PER_SECOND)
            await client.write_event(Synthesize(text=text).event())
            await client.write_event(SynthesizeStop().event())

        feeding = asyncio.create_task(feed())
        while True:
            event = await client.read_event()
            if event is None or SynthesizeStopped.is_type(event.type):
                break
            if AudioChunk.is_type(event.type):
                chunk = AudioChunk.from_event(event)
                arrivals.append((time.perf_counter() - started, len(chunk.audio) / 2 / chunk.rate))
        await feeding
        await client.disconnect()
        first = arrivals[0][0]
        stall, runs_dry = 0.0, first
        for arrived, seconds in arrivals:
            if arrived > runs_dry:
                stall += arrived - runs_dry
                runs_dry = arrived
            runs_dry += seconds
        return {
            "mode": mode,
            "first_audio_s": round(first, 2),
            "audio_s": round(sum(seconds for _, seconds in arrivals), 2),
            "stall_s": round(stall, 2),
            "last_audio_s": round(arrivals[-1][0], 2),
        }

    try:
        return asyncio.run(answer())
    finally:
        server.terminate()
        server.wait(30)


def floors_line(name: str, profile: dict[str, float], floor: dict) -> str:
    """Each part's measured ms a frame against what this machine allows it (benchmarks/floors.py)."""
    parts = ", ".join(
        f"{part} {profile[part]:.1f} / {ms:.1f} ms = {profile[part] / ms:.1f}x"
        for part, ms in floor["ms"].items()
        if part in profile and ms > 0
    )
    return (
        f"{name}, measured / floor: {parts} (read bandwidth {floor['read_bandwidth_gbs']} GB/s, "
        f"{floor['cached_read_gbs']} GB/s for the predictor's {floor['predictor_step_mb']} MB a step read "
        f"again; talker {floor['talker_mb']} MB and predictor {floor['predictor_mb']} MB read a frame; codec "
        f"{floor['codec_gflop']} GFLOP a frame against a {floor['codec_dtype']} matmul peak of "
        f"{floor['matmul_peak_gflops']} GFLOP/s)"
    )


def answer_table(results: list[dict]) -> str:
    lines = [
        "| server | first audio s | audio s | stall s (player ran dry) | last audio s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['mode']} | {r['first_audio_s']} | {r['audio_s']} | {r['stall_s']} | {r['last_audio_s']} |"
        for r in results
    ]
    medians = {
        mode: lower_median([r["stall_s"] for r in results if r["mode"] == mode], key=float)
        for mode in dict.fromkeys(r["mode"] for r in results)
    }
    if len(results) > len(medians):
        said = ", ".join(f"{mode} {stall} s" for mode, stall in medians.items())
        batched, alone = medians.get("batched"), medians.get("max-batch 1")
        ratio = f" ({batched / alone:.2f}x)" if batched is not None and alone else ""
        lines += ["", f"median stalls: {said}{ratio}"]
    return "\n".join(lines)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_memory_gb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident (VmRSS) or peak resident (VmHWM) memory, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field))) / 2**20


def server_command(
    model_dir: Path, port: int, frames: int, threads: int, extra: Sequence[str] = ()
) -> list[str]:
    """`python -m wyoming_qwen3tts` on loopback, greedy, with the benchmark's frame cap and threads."""
    command = [sys.executable, "-m", "wyoming_qwen3tts", "--model", str(model_dir)]
    command += ["--uri", f"tcp://127.0.0.1:{port}", "--threads", str(threads), "--greedy"]
    command += ["--data-dir", str(model_dir.parent)]  # where a predictor export is made and found
    return [*command, "--max-frames", str(frames), *extra]


async def _connect_when_up(port: int, server: subprocess.Popen) -> Any:
    """A wyoming client connected to the server once it listens (it loads its model first)."""
    import asyncio

    from wyoming.client import AsyncTcpClient

    while True:
        try:
            client = AsyncTcpClient("127.0.0.1", port)
            await client.connect()
            return client
        except OSError:
            if server.poll() is not None:
                _, errors = server.communicate()
                raise RuntimeError(f"server exited: {errors[-2000:]}") from None
            await asyncio.sleep(0.2)


async def _speak_once(client: Any) -> tuple[float, float, int]:
    """The benchmark text as one synthesize: (first audio s, total s, samples); disconnects."""
    from wyoming.audio import AudioChunk, AudioStop
    from wyoming.tts import Synthesize

    sent = time.perf_counter()
    await client.write_event(Synthesize(text=TEXT).event())
    first, samples = None, 0
    while (event := await client.read_event()) is not None and not AudioStop.is_type(event.type):
        if AudioChunk.is_type(event.type):
            first = first or time.perf_counter() - sent
            samples += len(AudioChunk.from_event(event).audio) // 2
    total = time.perf_counter() - sent
    await client.disconnect()
    return first or total, total, samples


def _http_speech(port: int, response_format: str = "pcm") -> tuple[float, int, float]:
    """The benchmark text over the HTTP API: (first byte s, samples if pcm, total s)."""
    import urllib.request

    body = json.dumps({"model": "qwen3-tts", "input": TEXT, "response_format": response_format}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/audio/speech", data=body, headers={"Content-Type": "application/json"}
    )
    sent = time.perf_counter()
    first, received = None, 0
    with urllib.request.urlopen(request, timeout=600) as response:
        while chunk := response.read1(65536):
            first = first or time.perf_counter() - sent
            received += len(chunk)
    total = time.perf_counter() - sent
    return first or total, received // 2, total


def measure_one(name: str, model_dir: Path, frames: int, threads: int) -> dict:
    setting = SETTINGS[name]
    measure = {"stock": measure_stock, "engine": measure_engine, "server": measure_server}[setting.path]
    result = measure(setting, model_dir, frames, threads)
    if setting.python:  # the .venv-ipex rows: say which torch they ran on
        import torch

        result["precision"] += f" [torch {torch.__version__.split('+')[0]}]"
    audio_s = result["samples"] / 24000
    result.update(
        name=name,
        frames=round(audio_s / FRAME_SECONDS),
        audio_s=audio_s,
        rtf=result["total_s"] / audio_s,
        peak_rss_gb=result.pop("server_peak_rss_gb", None)
        or result.pop("engine_peak_rss_gb", None)
        or float(os.environ.get("BENCHMARK_PEAK_RSS_GB", 0))
        or peak_rss_gb(),
    )
    return result


def ensure_model(model_dir: Path) -> Path:
    """The model to measure; one of ours (model_dir_of) is built on first use."""
    size = next((size for size in SIZES if model_dir == model_dir_of(size)), None)
    if (model_dir / "config.json").is_file():
        if size is not None:  # ours: keep its tokenizer as the builder now writes it
            from fixtures.model_builder import reference_spec, write_text_tokenizer

            write_text_tokenizer(model_dir, reference_spec("custom_voice", size).tokenizer)
        return model_dir
    from fixtures.tiny_model import build_model

    size = size or "real-0.6b"  # another directory: built with the 0.6B dimensions
    dims = size.removeprefix("real-").upper()
    print(
        f"Building a random-weight model with the real {dims} dimensions in {model_dir} (once)",
        file=sys.stderr,
    )
    return build_model(model_dir, "custom_voice", size=size)


def table(results: list[dict]) -> str:
    """The markdown table: ratios to stock float32 and to the fastest PyTorch row of the same run."""
    baseline = next((r for r in results if r["name"] == BASELINE), None)
    pytorch = [
        r for r in results if SETTINGS[r["name"]].backend == "pytorch" and SETTINGS[r["name"]].path != "stock"
    ]
    best = min(pytorch, key=lambda r: r["rtf"], default=None)
    lines = [
        "| setting | load s | peak RSS GB | first audio s | real-time factor | speed-up vs stock float32 "
        "| vs best PyTorch | formats |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        speedup = f"{baseline['rtf'] / r['rtf']:.2f}x" if baseline else "n/a"
        versus = f"{best['rtf'] / r['rtf']:.2f}x" if best else "n/a"
        lines.append(
            f"| {r['name']} | {r['load_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['first_audio_s']:.2f} | "
            f"{r['rtf']:.2f} | {speedup} | {versus} | {r['precision']} |"
        )
    return "\n".join(lines)


def malloc_environment(backend: str = "pytorch", predictor: str = "pytorch") -> dict[str, str]:
    """The environment a measured child process runs in: on the malloc a server of this backend and
    predictor would choose for itself (wyoming_qwen3tts/allocator.py, QWEN3TTS_ALLOCATOR), so an
    engine row and a server row compare."""
    from wyoming_qwen3tts.allocator import conflict, restart_environment

    choice = os.environ.get("QWEN3TTS_ALLOCATOR", "auto").lower()
    return restart_environment(choice, os.environ, conflict(backend, predictor)) or dict(os.environ)


def malloc_name(env: dict[str, str]) -> str:
    """Which malloc the rows run on, for the header line."""
    return "tcmalloc" if "tcmalloc" in env.get("LD_PRELOAD", "") else "the C library's malloc"


def _run_child(name: str, command: list[str], env: dict[str, str]) -> dict | None:
    """One setting measured in its own process: its result, or None (said on stderr) if it failed."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from wyoming_qwen3tts.engine.openvino.export import WEIGHTS as EXPORT_WEIGHTS

    parser = argparse.ArgumentParser(prog="script/benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        help="model directory (default: ours of --size, built with random weights if missing)",
    )
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="real-0.6b",
        help="the real dimensions of the model to build and measure",
    )
    parser.add_argument("--frames", type=int, default=48, help="frames per timed synthesis (80 ms each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--settings", default=",".join(DEFAULT_SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)}"
    )
    parser.add_argument(
        "--concurrency",
        help="instead of the settings: one server, N clients at once for each N of this list (e.g. 1,2,4)",
    )
    parser.add_argument(
        "--answer",
        action="store_true",
        help="instead of the settings: a four-sentence answer streamed in as Home Assistant does, played at "
        "real time: first audio, stall seconds and last audio, batched against --max-batch 1",
    )
    parser.add_argument(
        "--server-backend",
        choices=("pytorch", *(f"openvino-{weights}" for weights in EXPORT_WEIGHTS)),
        default="pytorch",
        help="the backend of --concurrency and --answer (an OpenVINO export is made once if missing)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="--concurrency: take the levels in turn this many times and report each level's median round; "
        "--answer: run the modes in turn this many times and report each mode's median stalls",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: measure one setting, print JSON
    args = parser.parse_args(argv)
    if args.model is None:
        args.model = model_dir_of(args.size)

    if args.one:
        print(json.dumps(measure_one(args.one, args.model, args.frames, args.threads)))
        return 0

    backend: list[str] = []
    server_malloc = malloc_name(malloc_environment(args.server_backend.split("-")[0]))
    if args.server_backend.startswith("openvino-") and (args.concurrency or args.answer):
        export = ensure_export(ensure_model(args.model), args.server_backend.split("-", 1)[1])
        backend = ["--backend", "openvino", "--ov-model-dir", str(export)]

    if args.concurrency:
        model_dir = ensure_model(args.model)
        levels = [int(n) for n in args.concurrency.split(",") if n.strip()]
        print(
            f"CPU: {cpu_name()}; {cpu_isa()}; {args.threads} threads; {args.frames} frames per client; "
            f"{args.server_backend}; {server_malloc}"
        )
        concurrent = [
            row
            for mode in MODES
            for row in measure_concurrency(
                model_dir, args.frames, args.threads, levels, mode, backend, args.rounds
            )
        ]
        print(concurrency_table(concurrent))
        if args.json:
            args.json.write_text(json.dumps(concurrent, indent=2))
        return 0

    if args.answer:
        model_dir = ensure_model(args.model)
        print(
            f"CPU: {cpu_name()}; {cpu_isa()}; {args.threads} threads; a {len(ANSWER)}-sentence answer, "
            f"{args.frames} frames a sentence; {server_malloc}"
        )
        answers = [
            measure_answer(model_dir, args.frames, args.threads, mode, backend)
            for _ in range(args.rounds)
            for mode in MODES
        ]
        print(answer_table(answers))
        if args.json:
            args.json.write_text(json.dumps(answers, indent=2))
        return 0

    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    model_dir = ensure_model(args.model)
    print(
        f"CPU: {cpu_name()}; {cpu_isa()}; {args.threads} threads; "
        f"{args.frames} frames ({args.frames * FRAME_SECONDS:.2f} s); "
        f"{malloc_name(malloc_environment())} (OpenVINO rows: the C library's malloc)"
    )
    for weights in sorted({SETTINGS[n].weights for n in names} - {""}):
        ensure_export(model_dir, weights)
    ensure_predictor_export(model_dir, {SETTINGS[n].predictor for n in names})
    results, skipped = [], 0
    for name in names:
        python = SETTINGS[name].python or Path(sys.executable)
        if not python.is_file():
            print(
                f"{name}: skipped, no {python.parent.parent.name} (script/setup --ipex builds it)",
                file=sys.stderr,
            )
            skipped += 1
            continue
        child = [str(python), "-m", "benchmarks.benchmark", "--one", name, "--model", str(model_dir)]
        child += ["--frames", str(args.frames), "--threads", str(args.threads)]
        with tempfile.TemporaryDirectory() as compile_cache:
            # A compiled row starts with an empty compile cache (its load s is a first start), then
            # starts again on what the first start left there (every later start of a server).
            row_malloc = malloc_environment(SETTINGS[name].backend, SETTINGS[name].predictor)
            env = {**row_malloc, "TORCHINDUCTOR_CACHE_DIR": compile_cache}
            result = _run_child(name, child, env)
            if result is None:
                continue
            if SETTINGS[name].compile:
                again = _run_child(name, child, env)
                result["warm_load_s"] = again["load_s"] if again else None
        results.append(result)
        print(
            f"{name}: rtf {result['rtf']:.2f}, first audio {result['first_audio_s']:.2f} s", file=sys.stderr
        )
    print(table(results))
    for result in results:
        if "warm_load_s" in result:
            print(
                f"\n{result['name']}: load {result['load_s']:.0f} s with an empty compile cache, "
                f"{result['warm_load_s'] or float('nan'):.0f} s on the cache the first start left"
            )
        if "wyoming_first_audio_s" in result:
            print(
                f"\n{result['name']}: first audio {result['first_audio_s']:.2f} s over HTTP as pcm, "
                f"{result['http_mp3_first_audio_s']:.2f} s as mp3, "
                f"{result['wyoming_first_audio_s']:.2f} s over Wyoming (same server, same text)"
            )
        profile = result.get("profile_ms_per_frame")
        if profile:
            parts = ", ".join(f"{name} {ms:.1f}" for name, ms in profile.items())
            print(f"\n{result['name']}, ms per 80 ms frame: {parts} (total {sum(profile.values()):.1f})")
        if profile and result.get("floors"):
            print(floors_line(result["name"], profile, result["floors"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if len(results) + skipped == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())

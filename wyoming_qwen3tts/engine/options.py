"""What every engine is configured with, whatever its backend: `EngineOptions` and the flags that fill it.

An engine receives these and its backend's own options (declared beside the backend:
engine/pytorch/options.py, engine/openvino/options.py), never the whole server Settings. Import-light:
settings.py reads the flags here before any backend is chosen, so nothing here imports torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..allocator import ALLOCATORS
from ..flags import Flag, FlagGroup, boolean, choice, optional_path, positive_int, seconds

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EngineOptions:
    """The model, where it lives, the threads it runs on, the voices it speaks and how a sentence ends."""

    model: str = DEFAULT_MODEL  # a local directory or a model id looked up (and downloaded) in data_dir
    data_dir: Path = Path("data")
    device: str = "cpu"  # only the CPU is supported (settings.check)
    threads: int = 0  # 0: one per physical performance core (cpu.default_threads)
    interop_threads: int = 1
    warmup: bool = True  # the server synthesizes a short phrase before it accepts connections
    max_frames: int = 0  # 0: derived from the text length
    greedy: bool = False
    voices_dir: Path | None = None
    voices_reload_interval: float = 5.0  # seconds between looks at --voices-dir; 0: never
    huge_pages: bool = True  # once loaded, the model's memory is moved onto 2 MB pages (memory.py)
    allocator: str = "auto"  # the process's malloc: tcmalloc where the system has it (allocator.py)


ENGINE_FLAGS = FlagGroup(
    "engine",
    "model and engine",
    EngineOptions,
    (
        Flag(
            "model",
            ("QWEN3TTS_MODEL", "TTS_MODEL_ID"),
            "local model directory, or a model id looked up (and downloaded) in --data-dir",
        ),
        Flag("data_dir", ("QWEN3TTS_DATA_DIR",), "where model ids are looked for and downloaded to", Path),
        Flag("device", ("QWEN3TTS_DEVICE", "TTS_DEVICE"), "torch device (only cpu is supported)"),
        Flag(
            "threads",
            ("QWEN3TTS_THREADS", "CPU_THREADS"),
            "torch intra-op threads; 0 = one per physical performance core",
            positive_int,
            type=positive_int,
        ),
        Flag(
            "interop_threads",
            ("QWEN3TTS_INTEROP_THREADS", "CPU_INTEROP"),
            "torch inter-op threads",
            positive_int,
            type=positive_int,
        ),
        Flag(
            "warmup",
            ("QWEN3TTS_WARMUP", "TTS_WARMUP_ON_START"),
            "synthesize a short phrase at start so the first request is fast",
            boolean,
            action=argparse.BooleanOptionalAction,
        ),
        Flag(
            "max_frames",
            ("QWEN3TTS_MAX_FRAMES",),
            "hard cap on frames (80 ms each) per sentence; 0 = derived from text length",
            positive_int,
            type=positive_int,
        ),
        Flag(
            "greedy",
            ("QWEN3TTS_GREEDY",),
            "greedy decoding instead of sampling (deterministic, for tests)",
            boolean,
            type=boolean,
            nargs="?",
            const="1",
        ),
        Flag(
            "voices_dir",
            ("QWEN3TTS_VOICES_DIR",),
            "directory of voices: voices.json, or NAME.wav + NAME.txt (clone), NAME.json (options)",
            optional_path,
        ),
        Flag(
            "voices_reload_interval",
            ("QWEN3TTS_VOICES_RELOAD_INTERVAL",),
            "seconds between looks for changes in --voices-dir (a stat of each file); 0 = never",
            seconds,
            type=seconds,
        ),
        Flag(
            "huge_pages",
            ("QWEN3TTS_HUGE_PAGES",),
            "once loaded, move the model's memory onto 2 MB pages (Linux 6.1+): each step reads its "
            "weights faster",
            boolean,
            action=argparse.BooleanOptionalAction,
        ),
        Flag(
            "allocator",
            ("QWEN3TTS_ALLOCATOR",),
            "the process's malloc: auto = tcmalloc where the system has it (libtcmalloc-minimal4: faster, "
            "less memory), else the C library's; tcmalloc = that or exit; system = the C library's",
            choice(ALLOCATORS),
            choices=ALLOCATORS,
        ),
    ),
)

# --dtype: read by every backend, each in its own way (the pytorch and ipex backends load and compute in
# it, the openvino backend passes it to OpenVINO as the inference precision): declared once, here.
DTYPE = Flag(
    "dtype",
    ("QWEN3TTS_DTYPE", "TTS_DTYPE"),
    "weights dtype; auto = bfloat16 where the CPU has native bf16, else float32. With --backend "
    "openvino: the precision OpenVINO computes in; auto = float32 on every CPU",
    choice(DTYPES),
    choices=DTYPES,
)

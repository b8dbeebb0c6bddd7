"""The child process that decodes one upload for uploads.py: `python -m wyoming_qwen3tts.http.decode_child`.

It reads the upload on stdin and writes one JSON line ({"rate": HZ} or {"error": WHY}), then mono float32
samples at 24 kHz. It limits itself (CPU seconds, memory, no files written) before it reads anything,
and stops as soon as the audio runs longer than allowed. It imports only PyAV, so it starts in a fraction
of a second; the parent kills it if it takes longer than its timeout.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import sys
from typing import Any

SAMPLE_RATE = 24000
MEMORY_HEADROOM = 768 * 2**20  # address space beyond what the child holds once PyAV is imported


class Refused(Exception):
    """An upload that decodes but breaks a limit."""


def main(container: str, max_samples: int, min_rate: int, max_rate: int, cpu_seconds: int) -> None:
    """Decode stdin; write one JSON line, then the samples."""
    import resource

    import av

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # it writes no file
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, size + MEMORY_HEADROOM))
    out = sys.stdout.buffer
    data = sys.stdin.buffer.read()
    try:
        chunks, rate = decode(av, data, container, max_samples, min_rate, max_rate)
    except Refused as err:
        out.write(json.dumps({"error": str(err)}).encode() + b"\n")
        return
    except MemoryError:
        out.write(b'{"error": "decoding it needs too much memory"}\n')
        return
    except Exception as err:  # whatever FFmpeg says about a broken file
        reason = " ".join(str(getattr(err, "strerror", None) or err).split())[:200] or type(err).__name__
        out.write(json.dumps({"error": f"it is damaged or not audio ({reason})"}).encode() + b"\n")
        return
    out.write(json.dumps({"rate": rate}).encode() + b"\n")
    for chunk in chunks:
        out.write(chunk)
    out.flush()


def decode(
    av: Any, data: bytes, container: str, max_samples: int, min_rate: int, max_rate: int
) -> tuple[list[bytes], int]:
    """The samples (float32 bytes, mono, 24 kHz) of data in this container, and its own sample rate."""
    chunks: list[bytes] = []
    total = 0
    rate = 0
    with av.open(io.BytesIO(data), format=container) as source:
        if not source.streams.audio:
            raise Refused("it holds no audio track")
        stream = source.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in itertools.chain(source.decode(stream), [None]):
            if frame is not None:
                rate = rate or int(frame.sample_rate)
                if not min_rate <= frame.sample_rate <= max_rate:
                    raise Refused(
                        f"its sample rate {frame.sample_rate} Hz is outside {min_rate} to {max_rate} Hz"
                    )
            for out in resampler.resample(frame):
                total += out.samples
                if total > max_samples:
                    raise Refused(
                        f"it is longer than {max_samples // SAMPLE_RATE} s; send a shorter recording"
                    )
                chunks.append(bytes(out.planes[0])[: out.samples * 4])
    if total == 0:
        raise Refused("it holds no audio samples")
    return chunks, rate


if __name__ == "__main__":
    main(sys.argv[1], *(int(value) for value in sys.argv[2:6]))

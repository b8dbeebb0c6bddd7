"""qwen-tts must import on a CPU-only install, even beside a torchaudio that cannot load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = textwrap.dedent(
    """
    import json, sys
    from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts
    qwen_tts = import_qwen_tts()
    speech_vq = sys.modules["qwen_tts.core.tokenizer_25hz.vq.speech_vq"]
    try:
        speech_vq.kaldi.fbank
        message = None
    except ImportError as err:
        message = str(err)
    print(json.dumps({
        "model_class": qwen_tts.Qwen3TTSModel.__name__,
        "left_in_sys_modules": sorted(k for k in ("torchaudio", "sox", "onnxruntime") if k in sys.modules),
        "placeholder_message": message,
    }))
    """
)


def run_probe(extra_path: Path | None = None) -> dict:
    env = {"PYTHONPATH": str(extra_path)} if extra_path else {}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_imports_without_torchaudio_and_leaves_no_placeholders():
    report = run_probe()
    assert report["model_class"] == "Qwen3TTSModel"
    assert report["left_in_sys_modules"] == []
    assert "25 Hz tokenizer" in report["placeholder_message"]


def test_imports_beside_a_torchaudio_that_fails_to_load(tmp_path):
    # PyPI's CUDA torchaudio beside CPU torch fails like this: OSError from a missing shared library.
    broken = tmp_path / "torchaudio"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise OSError('libcudart.so.13: cannot open shared object file')\n")
    report = run_probe(tmp_path)
    assert report["model_class"] == "Qwen3TTSModel"
    assert report["placeholder_message"] is not None


LOG_PROBE = textwrap.dedent(
    """
    import logging, sys
    level = logging.DEBUG if sys.argv[1] == "debug" else logging.INFO
    # As the server does: logging is set up first, then qwen-tts is imported and a model config built.
    logging.basicConfig(level=level, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
    from wyoming_qwen3tts.engine.qwen_import import import_qwen_tts
    import_qwen_tts()
    from qwen_tts.core.models import Qwen3TTSConfig
    Qwen3TTSConfig()  # no sub-configs: qwen-tts logs "... is None. Initializing ..." for each
    logging.getLogger("qwen_tts.core.models").warning("a warning still shows")
    """
)


def qwen_tts_log_lines(level: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", LOG_PROBE, level], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if " qwen_tts." in line]


def test_qwen_tts_says_nothing_at_info():
    assert qwen_tts_log_lines("info") == ["WARNING qwen_tts.core.models: a warning still shows"]


def test_qwen_tts_info_lines_show_under_debug():
    lines = qwen_tts_log_lines("debug")
    assert any(line.startswith("INFO qwen_tts.") and "is None. Initializing" in line for line in lines)

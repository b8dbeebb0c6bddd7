"""Import qwen-tts without the packages only its 25 Hz tokenizer needs.

`import qwen_tts` eagerly imports the 25 Hz tokenizer, whose module imports
torchaudio, sox and onnxruntime at the top. PyPI's torchaudio is a CUDA build
that fails to import beside a CPU torch, and the 12 Hz models we serve never
touch any of the three, so script/setup installs none of them. While qwen_tts
is imported, placeholders stand in for them; afterwards they are taken out of
sys.modules again, so no other library is told these packages exist.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import io
import logging
import sys
import types
from collections.abc import Iterator

# Imported at module level by qwen_tts.core.tokenizer_25hz only: package -> submodules it names.
TOKENIZER_25HZ_ONLY = {"torchaudio": ("compliance", "compliance.kaldi"), "sox": (), "onnxruntime": ()}

_LOGGER = logging.getLogger(__name__)

INSTALL_HINT = "run script/setup (it installs qwen-tts==0.1.1 with --no-deps)"

# qwen-tts logs at INFO whenever a config is built without a sub-config ("speaker_encoder_config is
# None. Initializing talker model with default values", seven such lines per model load): below WARNING
# its loggers speak only when ours is at DEBUG (--debug).
QUIET_LOGGERS = ("qwen_tts",)
_quieted: set[str] = set()


class Placeholder(types.ModuleType):
    """A module that fails loudly when used, naming what is missing and why."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        # A spec without origin: importlib.util.find_spec() probes (torch, transformers) answer "no files".
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(
            f"{self.__name__}.{attr} is not installed: wyoming-qwen3tts serves the 12 Hz "
            "Qwen3-TTS models only; the 25 Hz tokenizer needs torchaudio, sox and onnxruntime"
        )


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # a CUDA torchaudio beside CPU torch raises OSError, not ImportError
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return False
    return True


@contextlib.contextmanager
def placeholders_for_missing() -> Iterator[list[str]]:
    """Stand placeholders in for the 25 Hz-only packages that do not import, for the block's length."""
    placed: list[str] = []
    for root, submodules in TOKENIZER_25HZ_ONLY.items():
        if _importable(root):
            continue
        sys.modules[root] = Placeholder(root)
        placed.append(root)
        for sub in submodules:
            name = f"{root}.{sub}"
            sys.modules[name] = Placeholder(name)
            placed.append(name)
            # `import a.b.c as x` walks attributes, so hang each child on its parent.
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        yield placed
    finally:
        for name in placed:
            sys.modules.pop(name, None)


def quiet_third_party_logs() -> None:
    """Raise qwen-tts's loggers to WARNING unless wyoming_qwen3tts logs at DEBUG; idempotent.

    Decided at each call, from the logging set up by then: a level someone else gave those loggers is
    left alone, and one set here is taken back once our logger is at DEBUG.
    """
    debug = logging.getLogger("wyoming_qwen3tts").isEnabledFor(logging.DEBUG)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if debug and name in _quieted:
            logger.setLevel(logging.NOTSET)
            _quieted.discard(name)
        elif not debug and logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
            _quieted.add(name)


def import_qwen_tts() -> types.ModuleType:
    """Return the qwen_tts package, importable on a CPU-only install (its INFO logs quieted)."""
    quiet_third_party_logs()
    if "qwen_tts" in sys.modules:
        return sys.modules["qwen_tts"]
    if importlib.util.find_spec("qwen_tts") is None:
        raise ImportError(f"qwen-tts is not installed: {INSTALL_HINT}")
    # transformers records at its first import which packages exist: import it
    # before the placeholders stand in, so it records torchaudio as absent.
    importlib.import_module("transformers")
    # qwen_tts prints a flash-attn banner to stdout on import; keep it in the debug log.
    banner = io.StringIO()
    with placeholders_for_missing(), contextlib.redirect_stdout(banner):
        module = importlib.import_module("qwen_tts")
    if banner.getvalue().strip():
        _LOGGER.debug("qwen_tts says: %s", " ".join(banner.getvalue().split()))
    return module

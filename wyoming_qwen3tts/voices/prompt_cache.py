"""Clone prompts on disk: computed once per reference recording, read back on every later start.

Building a Base-model clone prompt runs the speaker encoder and the codec's
encoder over the reference audio; a restart should not pay for that again. A
prompt is stored as safetensors (tensors and a small string header, nothing a
loader would execute, unlike pickle) under a key made from the content of the
reference audio, its transcript, the cloning mode and the model's encoders, so
an edited recording, a new transcript or a different model never reuses it.
Files are written whole or not at all (written aside, then renamed), and an
unreadable one is simply computed again. The directory may be deleted at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

_LOGGER = logging.getLogger(__name__)

CACHE_FORMAT = "wyoming-qwen3tts clone prompt 1"
ICL = "icl"  # reference audio + transcript: the model continues the reference
X_VECTOR = "x_vector"  # audio alone: only the speaker embedding is used


@dataclass(frozen=True)
class StoredPrompt:
    """The parts of qwen-tts's VoiceClonePromptItem that carry information."""

    ref_spk_embedding: torch.Tensor
    ref_code: torch.Tensor | None  # (frames, 16) codec codes; None in speaker-embedding mode
    ref_text: str | None

    @property
    def mode(self) -> str:
        return ICL if self.ref_code is not None else X_VECTOR


def model_fingerprint(modules: Iterable[tuple[str, torch.nn.Module | None]]) -> str:
    """sha256 of what turns reference audio into a prompt: every tensor of the given modules.

    Names, dtypes, shapes and bytes all count, so another checkpoint, a fine-tune
    or another dtype gets other keys. Hashing happens once per start and only
    when a clone voice needs a key (about 0.2 s for a 0.6B model's encoders).
    """
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for prefix, module in modules:
        digest.update(f"\0{prefix}".encode())
        if module is None:
            continue
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        for name in sorted(tensors):
            tensor = tensors[name].detach()
            digest.update(f"\0{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def prompt_key(audio: bytes, transcript: str | None, fingerprint: str) -> str:
    """The cache key of one prompt: content of the audio, transcript, mode and model."""
    mode = ICL if transcript else X_VECTOR
    parts = [CACHE_FORMAT, fingerprint, hashlib.sha256(audio).hexdigest(), mode, transcript or ""]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class ClonePromptCache:
    """A directory of NAME.safetensors clone prompts; None as directory keeps nothing."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._write_failed = False

    def path(self, key: str) -> Path | None:
        return self.directory / f"{key}.safetensors" if self.directory is not None else None

    def load(self, key: str) -> StoredPrompt | None:
        """The stored prompt for key, or None when there is none (or it cannot be trusted)."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            return _read(path, key)
        except (OSError, SafetensorError, ValueError, KeyError) as err:
            _LOGGER.warning("Ignoring clone prompt cache file %s (%s); computing it again", path, err)
            return None

    def save(self, key: str, prompt: StoredPrompt, voice: str) -> None:
        """Store prompt under key; a directory that cannot be written only costs a warning."""
        path = self.path(key)
        if path is None:
            return
        tensors = {"ref_spk_embedding": prompt.ref_spk_embedding.detach().contiguous().clone()}
        if prompt.ref_code is not None:
            tensors["ref_code"] = prompt.ref_code.detach().contiguous().clone()
        metadata = {
            "format": CACHE_FORMAT,
            "key": key,
            "mode": prompt.mode,
            "ref_text": prompt.ref_text or "",
            "voice": voice,  # for people looking at the directory; any voice with this audio shares it
        }
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(partial), metadata=metadata)
            os.replace(partial, path)
        except (OSError, SafetensorError) as err:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            if not self._write_failed:
                _LOGGER.warning(
                    "Cannot store clone prompts in %s (%s); they are computed again at every start",
                    path.parent,
                    getattr(err, "strerror", None) or err,
                )
            self._write_failed = True


def _read(path: Path, key: str) -> StoredPrompt:
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        if metadata.get("format") != CACHE_FORMAT or metadata.get("key") != key:
            raise ValueError("written by another version or for another key")
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    mode = metadata.get("mode")
    embedding = tensors["ref_spk_embedding"]
    code = tensors.get("ref_code")
    if mode not in (ICL, X_VECTOR) or (mode == ICL) != (code is not None) or embedding.dim() != 1:
        raise ValueError("its contents do not match its mode")
    if code is not None and (code.dim() != 2 or code.dtype != torch.int64):
        raise ValueError("its reference codes are not (frames, groups) integers")
    ref_text = metadata.get("ref_text") or None
    if mode == ICL and not ref_text:
        raise ValueError("an in-context prompt without its transcript")
    return StoredPrompt(ref_spk_embedding=embedding, ref_code=code, ref_text=ref_text)

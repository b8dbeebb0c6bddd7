"""Saving, renaming and deleting voices.json voices, the way a person would edit the directory by hand.

The voice studio (http/studio.py) writes here. A saved voice is an entry of voices.json and, for a clone,
a WAV file beside it, nothing else: the server reads them back like any hand-written voice, and a person
can still edit the file. Every write is atomic (a temporary file in the same directory, fsync, rename,
fsync of the directory), so a crash or a full disk in the middle of a save leaves voices.json and every
earlier voice as they were. Temporary files are hidden (a leading dot): the reload watcher and the
voices directory never see them, and a later start removes any a crash left behind.

Order matters where two files change. A save places the audio first and then the voices.json that
refers to it; a delete writes voices.json first and then removes the audio. A crash in between leaves
at worst an audio file no entry refers to (a per-file voice of the same name), never an entry whose
audio is missing, which would stop the next start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import CONFIG_NAME, _refuse_duplicate_keys
from .directory import AUDIO_SUFFIXES
from .entry import NAME_RULE, VOICE_NAME

_LOGGER = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".studio-partial"  # temporary files: hidden, and named so a later start can sweep them
NEW_FILE_MODE = 0o644

# StoreError kinds
BAD_NAME = "bad-name"
EXISTS = "exists"
MISSING = "missing"
BROKEN = "broken"


class StoreError(Exception):
    """A change the store refuses; kind is one of BAD_NAME, EXISTS, MISSING, BROKEN."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_name(name: str) -> str:
    """name, if it can be a voice name (and so never a path); else StoreError(BAD_NAME)."""
    if not isinstance(name, str) or not VOICE_NAME.fullmatch(name):
        shown = name[:40] if isinstance(name, str) else name
        raise StoreError(f"{shown!r} is not a usable voice name: {NAME_RULE}", BAD_NAME)
    return name


def write_atomically(path: Path, data: bytes, mode: int = NEW_FILE_MODE) -> None:
    """path holds data, whole, or is left as it was: written aside, synced, renamed into place."""
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(partial, mode)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    sync_directory(path.parent)


def sync_directory(path: Path) -> None:
    """Make a rename or removal in path durable (where the filesystem allows a directory fsync)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse it; the rename itself is atomic
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def format_config(document: dict[str, Any]) -> str:
    """voices.json as a person would lay it out: one line per voice, two-space indentation."""
    lines = []
    for key, value in document.items():
        if key == "voices" and isinstance(value, dict) and value:
            voices = [
                f"    {json.dumps(name, ensure_ascii=False)}: {json.dumps(entry, ensure_ascii=False)}"
                for name, entry in value.items()
            ]
            text = "{\n" + ",\n".join(voices) + "\n  }"
        else:
            text = json.dumps(value, ensure_ascii=False)
        lines.append(f"  {json.dumps(key, ensure_ascii=False)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


class VoiceStore:
    """The voices.json voices of one voices directory, as the studio adds, renames and deletes them.

    Each change reads voices.json afresh, so a hand edit made meanwhile is kept, and holds a lock, so two
    requests never interleave their read and write.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    def sweep(self) -> None:
        """Remove the temporary files a crash during a save left behind."""
        with contextlib.suppress(OSError):
            for path in self.directory.glob(f".*{PARTIAL_SUFFIX}"):
                with contextlib.suppress(OSError):
                    path.unlink()
                    _LOGGER.info("Removed %s, left by a save that did not finish", path)

    def writable(self) -> bool:
        return os.access(self.directory, os.W_OK | os.X_OK) and (
            not self.config_path.exists() or os.access(self.config_path, os.W_OK)
        )

    def document(self) -> dict[str, Any]:
        """voices.json as it is now ({"voices": {}} when there is none); StoreError(BROKEN) if unreadable."""
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"voices": {}}
        except (OSError, UnicodeDecodeError) as err:
            raise StoreError(
                f"{self.config_path} cannot be read ({err}); fix it by hand first", BROKEN
            ) from None
        try:
            document = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        except ValueError as err:
            raise StoreError(
                f"{self.config_path} is not valid JSON ({err}); fix it by hand before saving voices", BROKEN
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("voices", {}), dict):
            raise StoreError(
                f'{self.config_path} must hold one object {{"voices": {{...}}}}; fix it by hand first', BROKEN
            )
        document.setdefault("voices", {})
        return document

    def names(self) -> list[str]:
        """The voice names voices.json defines (the ones the studio may rename and delete); [] if broken."""
        try:
            return [name for name in self.document()["voices"] if not name.startswith("_")]
        except StoreError:
            return []

    def add(
        self, name: str, entry: dict[str, Any], audio: bytes | None = None, taken: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Add voice name with entry (its audio, if any, saved as NAME.wav); the entry as written.

        taken: other names in use (the loaded voices), refused like voices.json's own.
        """
        check_name(name)
        with self._lock:
            document = self.document()
            voices: dict[str, Any] = document["voices"]
            self._check_free(name, [*voices, *taken, *self._per_file_names(voices)])
            entry = dict(entry)
            placed = None
            if audio is not None:
                placed = self._free_audio_path(name, voices)
                write_atomically(placed, audio)
                entry = {"audio": placed.name, **entry}
            voices[name] = entry
            try:
                self._write(document)
            except BaseException:
                if placed is not None:
                    with contextlib.suppress(OSError):
                        placed.unlink()
                raise
            return entry

    def rename(self, name: str, new_name: str | None = None, description: str | None = None) -> str:
        """Rename voice name and/or set its description ("" removes it); its name afterwards.

        The entry keeps its place in the file and its audio file; "openai_voices" follows the new name.
        """
        with self._lock:
            document = self.document()
            voices: dict[str, Any] = document["voices"]
            old = self._key(voices, name)
            new = old if new_name is None else check_name(new_name)
            if new.casefold() != old.casefold():
                self._check_free(new, [*voices, *self._per_file_names(voices)])
            entry = dict(voices[old])
            if description is not None:
                entry.pop("description", None)
                if description.strip():
                    entry["description"] = description.strip()
            document["voices"] = {
                (new if key == old else key): (entry if key == old else value)
                for key, value in voices.items()
            }
            table = document.get("openai_voices")
            if new != old and isinstance(table, dict):
                document["openai_voices"] = {
                    key: new if isinstance(value, str) and value.casefold() == old.casefold() else value
                    for key, value in table.items()
                }
            self._write(document)
            return new

    def delete(self, name: str) -> None:
        """Remove voice name from voices.json, then its audio file unless another entry uses it too."""
        with self._lock:
            document = self.document()
            voices: dict[str, Any] = document["voices"]
            key = self._key(voices, name)
            removed = voices.pop(key)
            self._write(document)
            audio = removed.get("audio") if isinstance(removed, dict) else None
            if not isinstance(audio, str):
                return
            path = self._inside(audio)
            if path is None or any(path == self._inside(other) for other in _audio_of(voices.values())):
                return
            with contextlib.suppress(OSError):
                path.unlink()
                sync_directory(path.parent)

    # -- helpers -------------------------------------------------------------------------------

    def _write(self, document: dict[str, Any]) -> None:
        try:
            mode = self.config_path.stat().st_mode & 0o7777
        except OSError:
            mode = NEW_FILE_MODE
        write_atomically(self.config_path, format_config(document).encode("utf-8"), mode)

    def _key(self, voices: dict[str, Any], name: str) -> str:
        """The key of voices.json that names name (any case); StoreError(MISSING) if none does."""
        wanted = name.casefold() if isinstance(name, str) else ""
        for key in voices:
            if not key.startswith("_") and key.casefold() == wanted:
                return key
        raise StoreError(f"voice {str(name)[:40]!r} is not defined in {self.config_path}", MISSING)

    def _check_free(self, name: str, names: Iterable[str]) -> None:
        if name.casefold() in {other.casefold() for other in names}:
            raise StoreError(f"a voice named {name!r} exists already; choose another name", EXISTS)

    def _per_file_names(self, voices: dict[str, Any]) -> list[str]:
        """The per-file voices beside voices.json: stems of its audio and .json files, less the audio
        voices.json's own voices speak with (as the voices directory reads them)."""
        used = {self._inside(audio) for audio in _audio_of(voices.values())}
        with contextlib.suppress(OSError):
            return [
                path.stem
                for path in self.directory.iterdir()
                if path.suffix in (*AUDIO_SUFFIXES, ".json")
                and path.name != CONFIG_NAME
                and not (path.suffix in AUDIO_SUFFIXES and path.resolve() in used)
            ]
        return []

    def _free_audio_path(self, name: str, voices: dict[str, Any]) -> Path:
        """NAME.wav, or NAME-2.wav ... when a file of that name exists (never overwrite a file)."""
        used = {path for path in (self._inside(a) for a in _audio_of(voices.values())) if path is not None}
        for number in range(1, 1000):
            stem = name if number == 1 else f"{name}-{number}"
            path = self.directory / f"{stem}.wav"
            if not path.exists() and not path.is_symlink() and path.resolve() not in used:
                return path
        raise StoreError(f"no free file name for {name!r} in {self.directory}", EXISTS)

    def _inside(self, raw: str) -> Path | None:
        """An entry's relative path resolved inside the directory, or None if it points elsewhere."""
        root = self.directory.resolve()
        path = (root / raw).resolve()
        return path if path.is_relative_to(root) else None


def _audio_of(entries: Iterable[Any]) -> list[str]:
    return [e["audio"] for e in entries if isinstance(e, dict) and isinstance(e.get("audio"), str)]

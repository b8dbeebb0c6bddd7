"""The voices directory: every voice it defines, and whether its files changed since the last look.

Two ways to define voices live side by side. voices.json names voices of any
kind (see config.py). The older per-file layout still works: NAME.wav (or
.flac, .ogg, .mp3) with an optional NAME.txt transcript clones a voice on a
Base model, and NAME.json may add "language(s)", "description" and, for a
VoiceDesign model, "instruct". voices.json wins where both name a voice, and
audio it refers to is not a voice of its own.

A rescan after a change is forgiving: a voice whose definition broke keeps the
version read before (or is left out if it is new), so one bad edit never costs
the other voices. The caller decides whether problems are fatal (at start-up).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import CONFIG_NAME, read_config
from .entry import NAME_RULE, VOICE_NAME, VoiceEntry, VoiceError, parse_languages

_LOGGER = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")

Signature = frozenset[tuple[str, int, int, int]]


@dataclass
class VoiceScan:
    """The voices of one look at the directory, and what was wrong with it."""

    entries: list[VoiceEntry] = field(default_factory=list)
    problems: list[VoiceError] = field(default_factory=list)
    kept: set[str] = field(default_factory=set)  # broken voices that keep the version read before


class VoicesDirectory:
    """Reads the voices of one directory and notices when its files change."""

    def __init__(self, path: Path, model_languages: Sequence[str]) -> None:
        self.path = path
        self._languages = tuple(model_languages)
        self._signature: Signature | None = None
        self._last_good: dict[str, VoiceEntry] = {}  # by name, from the last scan
        self._last_config: list[VoiceEntry] = []  # what voices.json held when it last parsed

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    def changed(self) -> bool:
        """True when a file was added, removed or modified since the last scan (a stat of each file)."""
        return self.signature() != self._signature

    def signature(self) -> Signature:
        """(path, size, mtime, inode) of every file below the directory, hidden files and folders left out.

        The inode catches a file replaced whole (as the voice studio saves) within one mtime tick.
        """
        stats = []
        for root, folders, files in os.walk(self.path):
            folders[:] = [f for f in folders if not f.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = os.path.join(root, name)
                try:
                    stat = os.stat(path)
                except OSError:  # removed meanwhile, or a dangling link
                    continue
                stats.append((path, stat.st_size, stat.st_mtime_ns, stat.st_ino))
        return frozenset(stats)

    def scan(self) -> VoiceScan:
        """Read every voice: voices.json's in file order, then the per-file voices by name."""
        self._signature = self.signature()  # taken first: a change while reading shows up next time
        scan = VoiceScan()
        try:
            files = [p for p in self.path.iterdir() if p.name != CONFIG_NAME and p.is_file()]
        except OSError as err:  # gone, or unreadable (an unmounted share): keep every voice read before
            scan.problems.append(VoiceError(self.path, None, f"cannot be read ({err.strerror or err})"))
            scan.entries = list(self._last_good.values())
            scan.kept = set(self._last_good)
            return scan
        configured = self._read_config(scan)
        self._read_voice_files(scan, files, configured)
        self._last_good = {entry.name: entry for entry in scan.entries}
        return scan

    def _read_config(self, scan: VoiceScan) -> list[VoiceEntry]:
        path = self.config_path
        if not path.exists():
            self._last_config = []
            return []
        try:
            config = read_config(path, self._languages)
        except VoiceError as err:
            scan.problems.append(err)
            scan.entries.extend(self._last_config)
            scan.kept.update(entry.name for entry in self._last_config)
            return list(self._last_config)
        good = {entry.name: entry for entry in config.entries}
        entries = []
        for name in config.names:
            entry = good.get(name) or self._previous(name, path)
            if entry is not None:
                entries.append(entry)
                if name not in good:
                    scan.kept.add(name)
        scan.problems.extend(config.problems)
        scan.entries.extend(entries)
        self._last_config = entries
        return entries

    def _read_voice_files(self, scan: VoiceScan, files: list[Path], configured: list[VoiceEntry]) -> None:
        names = sorted({p.stem for p in files if p.suffix in (*AUDIO_SUFFIXES, ".json")})
        used_audio = {entry.audio for entry in configured if entry.audio is not None}
        configured_names = {entry.name.casefold() for entry in configured}
        for name in names:
            if not VOICE_NAME.match(name):
                _LOGGER.warning("Skipping voice %r in %s: %s", name, self.path, NAME_RULE)
                continue
            audio = next(
                (self.path / f"{name}{s}" for s in AUDIO_SUFFIXES if (self.path / f"{name}{s}").is_file()),
                None,
            )
            if audio is not None and audio.resolve() in used_audio:
                continue  # voices.json speaks with this recording
            if name.casefold() in configured_names:
                _LOGGER.warning(
                    "Voice %s is defined in %s; its own files in %s are not read (rename them to keep both)",
                    name,
                    self.config_path,
                    self.path,
                )
                continue
            try:
                scan.entries.append(self._read_voice(name, audio))
            except VoiceError as err:
                scan.problems.append(err)
                previous = self._previous(name, None)
                if previous is not None:
                    scan.entries.append(previous)
                    scan.kept.add(name)

    def _read_voice(self, name: str, audio: Path | None) -> VoiceEntry:
        """NAME.wav, NAME.txt and NAME.json as one entry."""
        transcript_path = self.path / f"{name}.txt"
        options_path = self.path / f"{name}.json"
        transcript = None
        if audio is not None and transcript_path.is_file():
            try:
                transcript = transcript_path.read_text(encoding="utf-8").strip() or None
            except (OSError, UnicodeDecodeError) as err:
                raise VoiceError(transcript_path, name, f"cannot be read as UTF-8 text: {err}") from None
        options: dict = {}
        if options_path.is_file():
            try:
                options = json.loads(options_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise VoiceError(
                    options_path, name, f"is not valid JSON ({err}); fix it or remove it"
                ) from None
            if not isinstance(options, dict):
                raise VoiceError(options_path, name, 'must be a JSON object such as {"language": "en"}')
        for key in ("description", "instruct"):
            if key in options and not isinstance(options[key], str):
                raise VoiceError(options_path, name, f"{key} must be a string")
        raw_languages = options.get("languages", options.get("language", []))
        return VoiceEntry(
            name=name,
            source=audio or options_path,
            audio=audio.resolve() if audio is not None else None,
            transcript=transcript,
            instruct=options.get("instruct") or None,
            languages=parse_languages(raw_languages, self._languages, options_path, name),
            description=options.get("description", ""),
        )

    def _previous(self, name: str, source: Path | None) -> VoiceEntry | None:
        """The entry read for name by the last scan, if it came from source (None: from its own files)."""
        entry = self._last_good.get(name)
        if entry is None or (entry.source == self.config_path) != (source is not None):
            return None
        return entry

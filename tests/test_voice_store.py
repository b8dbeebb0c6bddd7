"""The voice store without a server: saved voices are what a person would write, and a save is atomic.

A failed write (a full disk, any OSError) and a process killed with SIGKILL in the middle of a save both
leave voices.json and every earlier voice as they were, readable by the server.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest

from wyoming_qwen3tts.voices.config import read_config
from wyoming_qwen3tts.voices.directory import VoicesDirectory
from wyoming_qwen3tts.voices.store import BAD_NAME, BROKEN, EXISTS, MISSING, StoreError, VoiceStore

LANGUAGES = ("chinese", "english", "german")
HAND_WRITTEN = {
    "_comment": "kept as written",
    "voices": {
        "grandma": {"audio": "grandma.wav", "transcript": "Hello dear.", "language": "de"},
        "narrator": {"instruct": "A warm, calm voice", "_note": "mine"},
    },
    "openai_voices": {"alloy": "grandma", "_comment": "also kept"},
}


def fake_wav(seconds_tag: int) -> bytes:
    return b"RIFF" + bytes([seconds_tag]) * 4000


@pytest.fixture
def voices(tmp_path) -> Path:
    (tmp_path / "grandma.wav").write_bytes(fake_wav(1))
    (tmp_path / "anna.wav").write_bytes(fake_wav(2))  # a per-file voice
    (tmp_path / "voices.json").write_text(json.dumps(HAND_WRITTEN), encoding="utf-8")
    return tmp_path


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_a_saved_voice_is_what_a_person_would_write(voices):
    store = VoiceStore(voices)
    entry = store.add("kitchen", {"transcript": "Hi there.", "language": "en"}, fake_wav(3))
    store.add("host", {"instruct": "A bright, quick voice", "description": "Host"})
    assert entry == {"audio": "kitchen.wav", "transcript": "Hi there.", "language": "en"}
    assert (voices / "kitchen.wav").read_bytes() == fake_wav(3)
    document = json.loads((voices / "voices.json").read_text(encoding="utf-8"))
    assert (
        document["_comment"] == "kept as written"
        and document["openai_voices"] == HAND_WRITTEN["openai_voices"]
    )
    assert list(document["voices"]) == ["grandma", "narrator", "kitchen", "host"]
    assert document["voices"]["narrator"] == HAND_WRITTEN["voices"]["narrator"]
    text = (voices / "voices.json").read_text(encoding="utf-8")
    assert '    "kitchen": {"audio": "kitchen.wav", "transcript": "Hi there.", "language": "en"}' in text
    config = read_config(voices / "voices.json", LANGUAGES)  # as the server reads it
    assert not config.problems
    assert [e.name for e in config.entries] == ["grandma", "narrator", "kitchen", "host"]
    assert store.names() == ["grandma", "narrator", "kitchen", "host"]
    assert not list(voices.glob(".*"))  # no temporary file left


@pytest.mark.parametrize(
    "name",
    ["", "../evil", "a/b", "/abs", ".hidden", "x" * 65, "with space", "line\n", "nul\x00", "名前", "-dash"],
)
def test_names_that_could_reach_outside_are_refused(voices, name):
    before = snapshot(voices)
    with pytest.raises(StoreError) as refused:
        VoiceStore(voices).add(name, {"instruct": "x"}, fake_wav(3))
    assert refused.value.kind == BAD_NAME
    assert snapshot(voices) == before
    assert not (voices.parent / "evil.wav").exists() and not (voices / "a").exists()


@pytest.mark.parametrize("name", ["GRANDMA", "narrator", "Anna", "taken"])
def test_a_name_in_use_in_any_case_is_refused(voices, name):
    before = snapshot(voices)
    with pytest.raises(StoreError) as refused:
        VoiceStore(voices).add(name, {"instruct": "x"}, taken=["taken"])
    assert refused.value.kind == EXISTS
    assert snapshot(voices) == before


def test_an_existing_file_is_never_overwritten(voices):
    store = VoiceStore(voices)
    store.add("kitchen", {}, fake_wav(3))
    store.rename("kitchen", "cook")  # cook still speaks with kitchen.wav
    entry = store.add("kitchen", {}, fake_wav(4))  # the name is free again; its file name is not
    assert entry["audio"] == "kitchen-2.wav"
    assert (voices / "kitchen.wav").read_bytes() == fake_wav(3)
    assert (voices / "kitchen-2.wav").read_bytes() == fake_wav(4)


def test_rename_keeps_the_place_the_rest_and_the_openai_names_follow(voices):
    store = VoiceStore(voices)
    assert store.rename("Grandma", "oma", "Oma, cloned") == "oma"
    document = json.loads((voices / "voices.json").read_text(encoding="utf-8"))
    assert list(document["voices"]) == ["oma", "narrator"]
    assert document["voices"]["oma"] == {**HAND_WRITTEN["voices"]["grandma"], "description": "Oma, cloned"}
    assert document["openai_voices"] == {"alloy": "oma", "_comment": "also kept"}
    assert document["_comment"] == "kept as written"
    store.rename("oma", description="")
    assert "description" not in json.loads((voices / "voices.json").read_text())["voices"]["oma"]
    with pytest.raises(StoreError) as refused:
        store.rename("oma", "narrator")
    assert refused.value.kind == EXISTS
    with pytest.raises(StoreError) as refused:
        store.rename("nobody", "x")
    assert refused.value.kind == MISSING


def test_delete_removes_the_audio_only_when_no_other_voice_uses_it(voices):
    store = VoiceStore(voices)
    document = json.loads((voices / "voices.json").read_text())
    document["voices"]["twin"] = {"audio": "grandma.wav"}
    (voices / "voices.json").write_text(json.dumps(document))
    store.delete("grandma")
    assert (voices / "grandma.wav").exists()  # twin speaks with it
    store.delete("twin")
    assert not (voices / "grandma.wav").exists()
    assert (voices / "anna.wav").exists()
    assert json.loads((voices / "voices.json").read_text())["voices"] == {
        "narrator": HAND_WRITTEN["voices"]["narrator"]
    }


def test_a_broken_voices_json_is_refused_and_left_alone(voices):
    (voices / "voices.json").write_text('{"voices": {"a": {}}, "voices": {}}')  # a duplicate key
    before = snapshot(voices)
    with pytest.raises(StoreError) as refused:
        VoiceStore(voices).add("new", {"instruct": "x"})
    assert refused.value.kind == BROKEN and "fix it by hand" in str(refused.value)
    assert snapshot(voices) == before


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4])
def test_a_full_disk_mid_save_leaves_everything_as_it_was(voices, monkeypatch, failing_call):
    """The n-th fsync fails with ENOSPC: 1 the audio, 2 its directory, 3 voices.json, 4 its directory."""
    before = snapshot(voices)
    calls = []
    real_fsync = os.fsync

    def fsync(descriptor):
        calls.append(descriptor)
        if len(calls) == failing_call:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        VoiceStore(voices).add("kitchen", {"transcript": "Hi."}, fake_wav(3))
    except OSError as err:
        assert err.errno == errno.ENOSPC
    monkeypatch.undo()
    after = snapshot(voices)
    if failing_call in (2, 4):  # a directory fsync a filesystem refuses is not an error: the save stands
        assert {k: v for k, v in after.items() if k not in ("kitchen.wav", "voices.json")} == {
            k: v for k, v in before.items() if k != "voices.json"
        }
    else:
        assert after == before
    assert not list(voices.glob(".*"))
    assert not read_config(voices / "voices.json", LANGUAGES).problems


def test_a_failed_rename_into_place_leaves_everything_as_it_was(voices, monkeypatch):
    before = snapshot(voices)
    real_replace = os.replace

    def replace(source, target):
        if str(target).endswith("voices.json"):
            raise OSError(errno.EIO, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        VoiceStore(voices).add("kitchen", {}, fake_wav(3))
    with pytest.raises(OSError):
        VoiceStore(voices).delete("grandma")
    assert snapshot(voices) == before
    assert not list(voices.glob(".*"))


def save_until_killed(voices: Path, stop_at: int, report: int) -> None:
    """In a forked child: save voice after voice; with stop_at, stop for the kill after that fsync."""
    real_fsync, calls = os.fsync, [0]

    def fsync(descriptor: int) -> None:
        real_fsync(descriptor)
        calls[0] += 1
        if calls[0] == stop_at:
            os.write(report, b"stopped\n")
            time.sleep(60)  # killed here

    if stop_at:
        os.fsync = fsync
    store = VoiceStore(voices)
    os.write(report, b"saving\n")
    for number in range(100000):
        store.add(f"voice{os.getpid()}-{number}", {"transcript": "Hi."}, bytes([number % 256]) * 300000)


def run_and_kill(voices: Path, stop_at: int, after: float = 0.0) -> None:
    """A real process (forked from this one: no second start-up) saving voices, killed with SIGKILL."""
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(reading)
            save_until_killed(voices, stop_at, writing)
        finally:
            os._exit(0)
    os.close(writing)
    try:
        with os.fdopen(reading, "rb") as said:
            assert said.readline() == b"saving\n"
            if stop_at:
                assert said.readline() == b"stopped\n"
            time.sleep(after)
            os.kill(pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def check_intact(voices: Path, before: dict[str, bytes]) -> None:
    now = snapshot(voices)
    for name, content in before.items():
        if name != "voices.json":
            assert now[name] == content, name
    config = read_config(voices / "voices.json", LANGUAGES)  # parses; every audio it names exists
    assert not config.problems
    names = [entry.name for entry in config.entries]
    assert names[:2] == ["grandma", "narrator"]
    earlier = json.loads(before["voices.json"])["voices"]
    document = json.loads(now["voices.json"])
    assert {k: v for k, v in document["voices"].items() if k in earlier} == earlier
    assert document["openai_voices"] == HAND_WRITTEN["openai_voices"]
    VoicesDirectory(voices, LANGUAGES).scan()  # and the server's reading of the directory does not fail


@pytest.mark.parametrize("stop_at", [1, 2, 3, 4, 6, 7])
def test_sigkill_mid_save_leaves_every_earlier_voice_and_voices_json_intact(voices, stop_at):
    """A real process killed at each fsync of a save (and of the next one), then at random moments."""
    before = snapshot(voices)
    run_and_kill(voices, stop_at)
    check_intact(voices, before)
    store = VoiceStore(voices)
    store.sweep()
    assert not list(voices.glob(".*"))  # what the kill left behind is gone at the next start
    store.add("after", {}, fake_wav(5))  # and saving goes on
    assert "after" in store.names()


def test_sigkill_at_random_moments_of_many_saves(voices):
    for delay in (0.05, 0.13, 0.21, 0.34):
        before = snapshot(voices)
        run_and_kill(voices, 0, delay)
        check_intact(voices, before)
        VoiceStore(voices).sweep()
    assert len(VoiceStore(voices).names()) > 2  # saves were made between the kills


def test_sweep_removes_only_its_own_leftovers(voices):
    (voices / ".voices.json.abc.studio-partial").write_bytes(b"{")
    (voices / ".keep-me").write_bytes(b"x")
    VoiceStore(voices).sweep()
    assert sorted(p.name for p in voices.glob(".*")) == [".keep-me"]


def test_a_write_is_checked_to_be_inside_the_directory_even_for_hand_written_paths(voices):
    document = json.loads((voices / "voices.json").read_text())
    document["voices"]["outside"] = {"audio": "../outside.wav"}
    (voices / "voices.json").write_text(json.dumps(document))
    (voices.parent / "outside.wav").write_bytes(b"keep")
    VoiceStore(voices).delete("outside")
    assert (voices.parent / "outside.wav").read_bytes() == b"keep"
    (voices.parent / "outside.wav").unlink()

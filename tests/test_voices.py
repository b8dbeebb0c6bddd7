"""The voices directory without a model: voices.json, per-file voices, change detection, prompt cache."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from wyoming_qwen3tts.service import SpeechOptions, SpeechService
from wyoming_qwen3tts.voices import (
    ClonePromptCache,
    StoredPrompt,
    VoiceError,
    VoicesDirectory,
    model_fingerprint,
    prompt_key,
)
from wyoming_qwen3tts.worker import InferenceWorker

LANGUAGES = ("chinese", "english", "german", "french")


def write(path: Path, content: str | bytes | dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def config(voices_dir: Path, voices: dict, **top: object) -> Path:
    return write(voices_dir / "voices.json", {**top, "voices": voices})


def scan(voices_dir: Path):
    return VoicesDirectory(voices_dir, LANGUAGES).scan()


# -- voices.json ------------------------------------------------------------------------------


def test_voices_json_defines_every_kind(tmp_path):
    write(tmp_path / "grandma.wav", b"RIFF")
    write(tmp_path / "recordings" / "grandpa.flac", b"fLaC")
    write(tmp_path / "recordings" / "grandpa.txt", "  Hallo, mein Schatz.\n")
    config(
        tmp_path,
        {
            "kitchen": {
                "speaker": "ryan",
                "instruct": "Cheerful",
                "language": "en",
                "description": "Kitchen",
            },
            "_draft": {"speaker": "nobody"},
            "grandma": {"audio": "grandma.wav", "transcript": "Hello dear.", "languages": ["de", "English"]},
            "grandpa": {"audio": "recordings/grandpa.flac", "transcript_file": "recordings/grandpa.txt"},
            "whisper": {"audio": "./grandma.wav", "_note": "speaker embedding only"},
            "narrator": {"instruct": "A warm, calm, middle-aged female voice", "language": "fr"},
        },
        _comment="keys starting with _ are comments",
    )
    result = scan(tmp_path)
    assert result.problems == []
    entries = {entry.name: entry for entry in result.entries}
    assert list(entries) == ["kitchen", "grandma", "grandpa", "whisper", "narrator"]  # file order

    kitchen = entries["kitchen"]
    assert (kitchen.kind, kitchen.speaker, kitchen.instruct) == ("preset", "ryan", "Cheerful")
    assert (kitchen.languages, kitchen.description) == (("english",), "Kitchen")
    grandma = entries["grandma"]
    assert grandma.kind == "clone" and grandma.audio == (tmp_path / "grandma.wav").resolve()
    assert grandma.transcript == "Hello dear." and grandma.languages == ("german", "english")
    assert entries["grandpa"].transcript == "Hallo, mein Schatz."
    assert entries["grandpa"].audio == (tmp_path / "recordings" / "grandpa.flac").resolve()
    assert entries["whisper"].transcript is None  # audio alone: speaker-embedding mode
    narrator = entries["narrator"]
    assert (narrator.kind, narrator.languages) == ("design", ("french",))
    assert all(entry.source == tmp_path / "voices.json" for entry in result.entries)


def test_per_file_voices_still_work_beside_voices_json(tmp_path):
    write(tmp_path / "anna.wav", b"RIFF")
    write(tmp_path / "anna.txt", "Hello, this is my voice.\n")
    write(tmp_path / "anna.json", {"language": "en", "description": "Anna, cloned"})
    write(tmp_path / "bob.flac", b"fLaC")
    write(tmp_path / "calm.json", {"instruct": "A calm voice", "languages": ["de"]})
    write(tmp_path / "shared.wav", b"RIFF")  # used by voices.json under another name
    write(tmp_path / "dora.wav", b"RIFF")
    write(tmp_path / "dora.json", {"description": "Dora from her own files"})
    write(tmp_path / "bad name!.wav", b"RIFF")
    config(
        tmp_path, {"kitchen": {"audio": "shared.wav"}, "dora": {"audio": "dora.wav", "description": "Dora"}}
    )

    result = scan(tmp_path)
    assert result.problems == []
    assert [e.name for e in result.entries] == ["kitchen", "dora", "anna", "bob", "calm"]
    entries = {entry.name: entry for entry in result.entries}
    anna = entries["anna"]
    assert anna.transcript == "Hello, this is my voice." and anna.languages == ("english",)
    assert anna.description == "Anna, cloned" and anna.source == tmp_path / "anna.wav"
    assert entries["bob"].transcript is None and entries["bob"].audio.suffix == ".flac"
    assert entries["calm"].kind == "design" and entries["calm"].languages == ("german",)
    assert entries["dora"].description == "Dora"  # voices.json wins over dora.json


@pytest.mark.parametrize(
    ("voices", "voice", "needles"),
    [
        ({"kitchen": {"speaker": "ryan", "lanugage": "en"}}, "kitchen", ["'lanugage'", "language"]),
        ({"kitchen": {"speaker": "ryan", "language": "tlh"}}, "kitchen", ["'tlh'", "english"]),
        ({"kitchen": {"speaker": "ryan", "audio": "clips/a.wav"}}, "kitchen", ['"speaker"', '"audio"']),
        ({"grandma": {"audio": "clips/a.wav", "instruct": "Warm"}}, "grandma", ['no "instruct"']),
        ({"nothing": {"description": "Quiet"}}, "nothing", ['"speaker"', '"audio"', '"instruct"']),
        ({"grandma": {"audio": "missing.wav"}}, "grandma", ["'missing.wav' does not exist", "put it there"]),
        (
            {"grandma": {"audio": "../outside.wav"}},
            "grandma",
            ["outside the voices directory", "copy the file"],
        ),
        ({"grandma": {"audio": "/etc/hostname"}}, "grandma", ["outside the voices directory"]),
        ({"grandma": {"audio": "clips/link.wav"}}, "grandma", ["outside the voices directory"]),
        ({"ryan": {"speaker": "ryan", "transcript": "Hi."}}, "ryan", ["transcript", '"audio"']),
        ({"../evil": {"speaker": "ryan"}}, "../evil", ["letters, digits"]),
        ({"kitchen": {"speaker": ""}}, "kitchen", ["speaker must be a non-empty string"]),
        ({"kitchen": "ryan"}, "kitchen", ["must be an object"]),
    ],
)
def test_a_broken_voice_is_named_with_its_file_and_fix(tmp_path, voices, voice, needles):
    root = tmp_path / "voices"
    write(root / "clips" / "a.wav", b"RIFF")  # in a folder: not a per-file voice of its own
    write(tmp_path / "outside.wav", b"RIFF")
    (root / "clips" / "link.wav").symlink_to(tmp_path / "outside.wav")
    config(root, {**voices, "fine": {"speaker": "ryan"}})
    result = scan(root)
    assert [e.name for e in result.entries] == ["fine"]  # the others are untouched
    (problem,) = result.problems
    assert isinstance(problem, VoiceError) and problem.voice == voice
    message = str(problem)
    assert str(root / "voices.json") in message and repr(voice) in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"voices": {"a": {"speaker": "ryan"},}}', "not valid JSON"),
        ('{"voices": {"a": {"speaker": "ryan"}, "a": {"speaker": "eric"}}}', "'a' appears twice"),
        ('{"voice": {}}', '{"voices": {"NAME": {...}'),
        ('{"voices": {}, "default": "a"}', "unknown top-level key 'default'"),
        ("[]", '{"voices"'),
    ],
)
def test_a_broken_voices_json_is_named(tmp_path, text, needle):
    write(tmp_path / "voices.json", text)
    write(tmp_path / "anna.wav", b"RIFF")
    result = scan(tmp_path)
    assert [e.name for e in result.entries] == ["anna"]  # per-file voices are still read
    (problem,) = result.problems
    assert problem.voice is None and str(tmp_path / "voices.json") in str(problem) and needle in str(problem)


def test_a_broken_per_file_voice_names_its_file(tmp_path):
    write(tmp_path / "anna.wav", b"RIFF")
    write(tmp_path / "anna.json", '{"language": "en"')
    write(tmp_path / "bob.wav", b"RIFF")
    result = scan(tmp_path)
    assert [e.name for e in result.entries] == ["bob"]
    (problem,) = result.problems
    assert problem.voice == "anna" and str(tmp_path / "anna.json") in str(problem)


def test_a_voice_broken_by_an_edit_keeps_its_last_good_version(tmp_path):
    directory = VoicesDirectory(tmp_path, LANGUAGES)
    config(tmp_path, {"kitchen": {"speaker": "ryan", "language": "en"}, "hall": {"speaker": "eric"}})
    write(tmp_path / "anna.wav", b"RIFF")
    write(tmp_path / "anna.json", {"language": "en"})
    first = directory.scan()
    assert first.problems == [] and [e.name for e in first.entries] == ["kitchen", "hall", "anna"]

    config(tmp_path, {"kitchen": {"speaker": "ryan", "language": "xx"}, "hall": {"speaker": "aiden"}})
    write(tmp_path / "anna.json", "{broken")
    write(tmp_path / "new.wav", b"RIFF")
    write(tmp_path / "new.json", "{broken")
    second = directory.scan()
    assert {p.voice for p in second.problems} == {"kitchen", "anna", "new"}
    assert second.kept == {"kitchen", "anna"}  # "new" had no earlier version
    entries = {e.name: e for e in second.entries}
    assert list(entries) == ["kitchen", "hall", "anna"]
    assert entries["kitchen"] == first.entries[0] and entries["hall"].speaker == "aiden"

    write(tmp_path / "voices.json", "not json")
    third = directory.scan()
    assert [e.name for e in third.entries] == ["kitchen", "hall", "anna"]
    assert third.kept >= {"kitchen", "hall"} and third.problems[0].voice is None


def test_a_vanished_voices_directory_keeps_every_voice_read_before(tmp_path):
    root = tmp_path / "voices"
    directory = VoicesDirectory(root, LANGUAGES)
    write(root / "anna.wav", b"RIFF")
    config(root, {"kitchen": {"speaker": "ryan"}})
    first = directory.scan()
    root.rename(tmp_path / "unmounted")
    assert directory.changed()
    second = directory.scan()
    assert second.entries == first.entries and second.kept == {"kitchen", "anna"}
    (problem,) = second.problems
    assert problem.voice is None and str(root) in str(problem)


def test_changed_notices_added_edited_and_removed_files_only(tmp_path):
    directory = VoicesDirectory(tmp_path, LANGUAGES)
    write(tmp_path / "anna.wav", b"RIFF")
    directory.scan()
    assert not directory.changed()
    write(tmp_path / ".anna.json.swp", "editor scratch")  # hidden files are not voices
    assert not directory.changed()
    write(tmp_path / "recordings" / "bob.wav", b"RIFF")  # voices.json may refer into folders
    assert directory.changed()
    directory.scan()
    stat = (tmp_path / "anna.wav").stat()
    os.utime(tmp_path / "anna.wav", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert directory.changed()
    directory.scan()
    (tmp_path / "anna.wav").unlink()
    assert directory.changed()


# -- clone prompt cache -----------------------------------------------------------------------


def test_prompt_key_follows_audio_transcript_mode_and_model():
    base = prompt_key(b"audio", "Hello.", "model-a")
    assert base == prompt_key(b"audio", "Hello.", "model-a")
    others = [
        prompt_key(b"audio!", "Hello.", "model-a"),
        prompt_key(b"audio", "Hello!", "model-a"),
        prompt_key(b"audio", None, "model-a"),
        prompt_key(b"audio", "Hello.", "model-b"),
    ]
    assert len({base, *others}) == 5


def test_model_fingerprint_changes_with_weights_and_dtype():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    fingerprint = model_fingerprint([("speaker_encoder", encoder), ("codec_encoder", None)])
    assert fingerprint == model_fingerprint([("speaker_encoder", encoder), ("codec_encoder", None)])
    with torch.no_grad():
        encoder[0].weight[0, 0] += 1e-3
    changed = model_fingerprint([("speaker_encoder", encoder), ("codec_encoder", None)])
    halved = model_fingerprint([("speaker_encoder", encoder.to(torch.bfloat16)), ("codec_encoder", None)])
    assert len({fingerprint, changed, halved}) == 3


@pytest.mark.parametrize("in_context", [True, False])
def test_prompt_cache_round_trip_is_safetensors(tmp_path, in_context):
    cache = ClonePromptCache(tmp_path / "voice-cache")
    prompt = StoredPrompt(
        ref_spk_embedding=torch.randn(64),
        ref_code=torch.randint(0, 2048, (19, 16)) if in_context else None,
        ref_text="Hello, this is my voice." if in_context else None,
    )
    key = prompt_key(b"audio", prompt.ref_text, "model")
    assert cache.load(key) is None
    cache.save(key, prompt, voice="anna")
    loaded = cache.load(key)
    assert loaded is not None and torch.equal(loaded.ref_spk_embedding, prompt.ref_spk_embedding)
    assert loaded.ref_text == prompt.ref_text and loaded.mode == prompt.mode
    if in_context:
        assert torch.equal(loaded.ref_code, prompt.ref_code)
    else:
        assert loaded.ref_code is None
    # Plain safetensors: tensors and a string header, readable by any safetensors reader.
    with safe_open(str(cache.path(key)), framework="pt") as file:
        assert file.metadata()["voice"] == "anna"
        assert set(file.keys()) == (
            {"ref_spk_embedding", "ref_code"} if in_context else {"ref_spk_embedding"}
        )
    assert [p.name for p in (tmp_path / "voice-cache").iterdir()] == [f"{key}.safetensors"]
    assert cache.load(prompt_key(b"other audio", prompt.ref_text, "model")) is None


def test_an_unreadable_cache_file_is_computed_again(tmp_path, caplog):
    cache = ClonePromptCache(tmp_path)
    key = prompt_key(b"audio", None, "model")
    write(tmp_path / f"{key}.safetensors", b"\x80\x04 not a safetensors file")
    with caplog.at_level(logging.WARNING):
        assert cache.load(key) is None
    assert "computing it again" in caplog.text
    cache.save(key, StoredPrompt(torch.zeros(4), None, None), voice="bob")
    assert cache.load(key) is not None


def test_an_unwritable_cache_costs_only_a_warning(tmp_path, caplog):
    blocker = write(tmp_path / "not-a-dir", "file")
    cache = ClonePromptCache(blocker / "voice-cache")
    with caplog.at_level(logging.WARNING):
        cache.save("k", StoredPrompt(torch.zeros(4), None, None), voice="bob")
        cache.save("k2", StoredPrompt(torch.zeros(4), None, None), voice="bob")
    assert caplog.text.count("Cannot store clone prompts") == 1
    assert cache.load("k") is None


# -- the watcher --------------------------------------------------------------------------------


class ReloadRecorder:
    """Counts reload_voices calls and the threads they ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def reload_voices(self) -> bool:
        self.threads.append(threading.current_thread().name)
        if len(self.threads) == 2:
            raise RuntimeError("a bug in one reload")
        return False


async def test_the_watcher_reloads_on_the_inference_thread_and_survives_a_failure(caplog):
    recorder = ReloadRecorder()
    inference = InferenceWorker(thread_name="inference-under-test")
    service = SpeechService(recorder, SpeechOptions(), inference)  # type: ignore[arg-type]
    watching = asyncio.create_task(service.watch_voices(0.01))
    try:
        for _ in range(500):
            if len(recorder.threads) >= 4:
                break
            await asyncio.sleep(0.01)
    finally:
        watching.cancel()
        await inference.aclose()
    assert len(recorder.threads) >= 4
    assert {name.split("_")[0] for name in recorder.threads} == {"inference-under-test"}
    assert "Reloading the voices failed" in caplog.text

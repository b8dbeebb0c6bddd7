"""Voices end to end: the real server (python -m wyoming_qwen3tts) with voices.json on the tiny models, on
each backend (conftest's `backend`).

Greedy decoding makes audio a function of text, voice and language, so where a
request's language went is seen in its audio: two requests that resolved to the
same language sound the same, and another language sounds different.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerProcess, run_server_command, running_server
from test_server import audio_of, describe, is_audio_stop, send
from wyoming.error import Error
from wyoming.event import Event

SERVER_ARGS = ["--greedy", "--no-warmup", "--threads", "1", "--max-frames", "3"]
TEXT = "Hello there."


def speak(uri: str, name: str | None, language: str | None = None, speaker: str | None = None) -> np.ndarray:
    pairs = (("name", name), ("language", language), ("speaker", speaker))
    voice = {key: value for key, value in pairs if value}
    event = Event(type="synthesize", data={"text": TEXT, "voice": voice})
    events = asyncio.run(send(uri, event, until=is_audio_stop))
    assert events[-1].type == "audio-stop", [e.type for e in events]
    audio = audio_of(events)
    assert audio.size == 3 * 1920 and np.abs(audio).max() > 0
    return audio


def refused(uri: str, name: str, language: str) -> Error:
    event = Event(type="synthesize", data={"text": TEXT, "voice": {"name": name, "language": language}})
    (error,) = [Error.from_event(e) for e in asyncio.run(send(uri, event)) if Error.is_type(e.type)]
    return error


def voices_of(uri: str) -> dict:
    return {voice.name: voice for voice in asyncio.run(describe(uri)).tts[0].voices}


def write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document), encoding="utf-8")


@pytest.fixture(scope="module")
def custom_voice_config_server(model_args, tmp_path_factory):
    root = tmp_path_factory.mktemp("custom_voice_voices")
    voices = {
        "kitchen": {"speaker": "ryan", "language": "de", "description": "Kitchen, in German"},
        "hall": {"speaker": "Ryan", "languages": ["en", "de"]},
        "cheerful": {"speaker": "vivian", "instruct": "Very cheerful"},
    }
    write_json(root / "voices.json", {"voices": voices})
    args = [*model_args("custom_voice"), "--voices-dir", str(root), *SERVER_ARGS]
    args += ["--data-dir", str(tmp_path_factory.mktemp("data"))]
    with running_server(args) as server:
        yield server


@pytest.fixture(scope="module")
def base_config_server(model_args, voices_dir, tmp_path_factory):
    """anna (in-context, English) and bob (speaker embedding, no language) per file, plus voices.json;
    --language fr and a voices directory that is looked at every 0.2 s."""
    root = tmp_path_factory.mktemp("base_voices")
    for name in ("anna.wav", "anna.txt", "anna.json", "bob.wav"):
        shutil.copy(voices_dir / name, root / name)
    (root / "clips").mkdir()
    shutil.copy(voices_dir / "bob.wav", root / "clips" / "grandpa.wav")
    voices = {
        "grandpa": {"audio": "clips/grandpa.wav", "transcript": "Hello, this is me.", "language": "de"},
        "grandpa-plain": {"audio": "clips/grandpa.wav", "description": "Grandpa, speaker embedding only"},
    }
    write_json(root / "voices.json", {"voices": voices})
    args = [*model_args("base"), "--voices-dir", str(root), "--language", "fr", *SERVER_ARGS]
    args += ["--data-dir", str(tmp_path_factory.mktemp("data")), "--voices-reload-interval", "0.2"]
    with running_server(args) as server:
        server.voices_dir = root  # type: ignore[attr-defined]
        yield server


# -- every kind listed and spoken ------------------------------------------------------------------------


def test_custom_voice_server_lists_and_speaks_named_presets(custom_voice_config_server):
    uri = custom_voice_config_server.uri
    voices = voices_of(uri)
    assert list(voices)[:3] == ["kitchen", "hall", "cheerful"] and "ryan" in voices and "vivian" in voices
    kitchen = voices["kitchen"]
    assert kitchen.languages == ["de"] and kitchen.description == "Kitchen, in German"
    assert [speaker.name for speaker in kitchen.speakers] == ["ryan"]
    assert voices["hall"].languages == ["en", "de"]
    assert "en" in voices["ryan"].languages and "zh" in voices["ryan"].languages  # a preset speaks them all
    for name in ("kitchen", "hall", "cheerful"):
        speak(uri, name)


def test_base_server_lists_and_speaks_every_clone(base_config_server):
    uri = base_config_server.uri
    voices = voices_of(uri)
    assert {"grandpa", "grandpa-plain", "anna", "bob"} <= set(voices)
    assert list(voices)[:2] == ["grandpa", "grandpa-plain"]
    assert voices["grandpa"].languages == ["de"]
    assert voices["grandpa-plain"].description == "Grandpa, speaker embedding only"
    assert voices["anna"].languages == ["en"] and voices["anna"].description == "Anna, cloned"
    spoken = {name: speak(uri, name) for name in ("grandpa", "grandpa-plain", "anna", "bob")}
    assert not np.array_equal(spoken["grandpa"], spoken["grandpa-plain"])  # in-context vs embedding only


def test_voice_design_server_lists_and_speaks_named_instructions(model_args, tmp_path):
    voices = {
        "narrator": {"instruct": "A warm, calm, middle-aged female voice", "language": "en"},
        "herald": {"instruct": "A loud, proud, young male voice", "description": "The herald"},
    }
    write_json(tmp_path / "voices.json", {"voices": voices})
    args = [*model_args("voice_design"), "--voices-dir", str(tmp_path), *SERVER_ARGS]
    with running_server([*args, "--data-dir", str(tmp_path / "data")]) as server:
        listed = voices_of(server.uri)
        assert list(listed) == ["narrator", "herald"]
        assert listed["narrator"].description == voices["narrator"]["instruct"]
        assert listed["narrator"].languages == ["en"] and listed["herald"].description == "The herald"
        narrator, herald = speak(server.uri, "narrator", "en"), speak(server.uri, "herald", "en")
        assert not np.array_equal(narrator, herald)


def test_a_speaker_alone_means_the_voice_of_that_name_before_a_named_preset(custom_voice_config_server):
    uri = custom_voice_config_server.uri  # "kitchen" (speaker ryan, German) is listed before "ryan"
    by_speaker = speak(uri, None, speaker="ryan")
    assert np.array_equal(by_speaker, speak(uri, "ryan"))
    assert not np.array_equal(by_speaker, speak(uri, "kitchen"))
    assert np.array_equal(
        speak(uri, "kitchen", speaker="ryan"), speak(uri, "kitchen")
    )  # Home Assistant's way


# -- language: request, else the voice's, else --language, else auto ---------------------------------


def test_the_request_language_wins(custom_voice_config_server):
    uri = custom_voice_config_server.uri
    english = speak(uri, "ryan", "en")
    assert np.array_equal(speak(uri, "kitchen", "en-GB"), english)  # kitchen is ryan, its German overruled
    assert not np.array_equal(speak(uri, "ryan", "de"), english)


def test_a_voice_with_one_language_speaks_it(custom_voice_config_server):
    uri = custom_voice_config_server.uri
    assert np.array_equal(speak(uri, "kitchen"), speak(uri, "ryan", "de"))


def test_a_voice_with_several_languages_falls_back_to_auto(custom_voice_config_server):
    uri = custom_voice_config_server.uri  # started without --language
    hall = speak(uri, "hall")
    assert np.array_equal(hall, speak(uri, "ryan", "auto"))
    assert not np.array_equal(hall, speak(uri, "ryan", "en")) and not np.array_equal(
        hall, speak(uri, "ryan", "de")
    )


def test_the_server_language_applies_when_neither_request_nor_voice_names_one(base_config_server):
    uri = base_config_server.uri  # --language fr
    bob = speak(uri, "bob")
    assert np.array_equal(bob, speak(uri, "bob", "fr"))
    assert not np.array_equal(bob, speak(uri, "bob", "auto"))
    assert np.array_equal(
        speak(uri, "anna"), speak(uri, "anna", "en")
    )  # anna's own language beats --language


@pytest.mark.parametrize("language", ["sv", "tlh", "xx-YY"])
def test_a_language_the_model_cannot_speak_is_a_clear_error(custom_voice_config_server, language):
    uri = custom_voice_config_server.uri
    error = refused(uri, "kitchen", language)
    assert error.code == "unsupported-language" and repr(language) in error.text
    assert asyncio.run(describe(uri)).tts  # the server carries on


# -- the voices directory while the server runs ------------------------------------------------------------


def test_voices_come_and_go_without_a_restart(base_config_server, voices_dir):
    uri, root = base_config_server.uri, base_config_server.voices_dir

    def wait_for(condition, what: str) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = time.monotonic()
            voices = voices_of(uri)
            assert time.monotonic() - started < 1.0  # describe never waits for a prompt being built
            if condition(voices):
                return voices
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting until {what}")

    shutil.copy(voices_dir / "bob.wav", root / "carl.wav")
    write_json(root / "carl.json", {"language": "de", "description": "Carl, added while running"})
    voices = wait_for(lambda v: "carl" in v, "carl is listed")
    assert voices["carl"].languages == ["de"] and voices["carl"].description == "Carl, added while running"
    speak(uri, "carl")

    # A broken new voice is left out; the good one beside it and every other voice stay.
    document = json.loads((root / "voices.json").read_text(encoding="utf-8"))
    document["voices"]["dora"] = {"audio": "clips/missing.wav"}
    document["voices"]["erin"] = {
        "audio": "clips/grandpa.wav",
        "transcript": "Hi, I am Erin.",
        "language": "en",
    }
    write_json(root / "voices.json", document)
    voices = wait_for(lambda v: "erin" in v, "erin is listed")
    assert "dora" not in voices and {"grandpa", "grandpa-plain", "anna", "bob", "carl"} <= set(voices)
    speak(uri, "erin")

    for name in ("carl.wav", "carl.json"):
        (root / name).unlink()
    wait_for(lambda v: "carl" not in v, "carl is gone")
    error = refused(uri, "carl", "de")
    assert error.code == "unknown-voice"


# -- clone prompts across restarts, and start-up problems ---------------------------------------------------


def test_clone_prompts_are_reused_after_a_restart(model_args, voices_dir, tmp_path):
    root, data = tmp_path / "voices", tmp_path / "data"
    root.mkdir()
    for name in ("anna.wav", "anna.txt", "bob.wav"):
        shutil.copy(voices_dir / name, root / name)
    args = [*model_args("base"), "--voices-dir", str(root), "--data-dir", str(data), *SERVER_ARGS]

    def one_run() -> tuple[dict[str, np.ndarray], str]:
        server = ServerProcess(args)
        try:
            server.wait_ready()
            audio = {name: speak(server.uri, name) for name in ("anna", "bob")}
        finally:
            log = server.stop()
        return audio, log

    first, first_log = one_run()
    assert first_log.count("clone prompt built") == 2
    assert len(list((data / "voice-cache").glob("*.safetensors"))) == 2
    second, second_log = one_run()
    assert (
        "clone prompt built" not in second_log and second_log.count("clone prompt read from the cache") == 2
    )
    for name in first:
        assert np.array_equal(first[name], second[name])


@pytest.mark.parametrize(
    ("voices_json", "needles"),
    [
        (
            '{"voices": {"hall": {"speaker": "ryan", "lanugage": "en"}}}',
            ["voices.json", "'hall'", "'lanugage'"],
        ),
        ('{"voices": {"hall": {"speaker": "ryan",}}}', ["voices.json", "not valid JSON"]),
        ('{"voices": {"hall": {"speaker": "nobody"}}}', ["voices.json", "'hall'", "'nobody'", "ryan"]),
    ],
)
def test_a_broken_voices_json_stops_start_up_with_one_line(tiny_models, tmp_path, voices_json, needles):
    (tmp_path / "voices.json").write_text(voices_json, encoding="utf-8")
    args = ["--model", str(tiny_models["custom_voice"]), "--voices-dir", str(tmp_path), "--no-warmup"]
    result = run_server_command([*args, "--data-dir", str(tmp_path / "data")])
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("wyoming-qwen3tts: error:")]
    for needle in needles:
        assert needle in line
    assert "Traceback" not in result.stderr

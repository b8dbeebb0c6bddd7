"""Flags, environment variables and defaults resolve in that order, and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from wyoming_qwen3tts.settings import Settings, SettingsError, TorchOptions, parse_settings


def test_defaults():
    settings = parse_settings([], environ={})
    assert settings == Settings()
    assert settings.uri == "tcp://0.0.0.0:10200"
    assert settings.model == "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"


def test_flag_beats_environment_beats_default():
    environ = {"CPU_THREADS": "3", "TTS_DTYPE": "bfloat16", "QWEN3TTS_VOICE": "ryan"}
    settings = parse_settings(["--threads", "5"], environ=environ)
    assert settings.engine.threads == 5
    assert settings.torch.dtype == settings.openvino.dtype == "bfloat16"
    assert settings.speech.voice == "ryan"


def test_known_environment_names_of_other_cpu_servers():
    environ = {
        "TTS_MODEL_ID": "/models/x",
        "TTS_ATTN": "eager",
        "CPU_INTEROP": "2",
        "TTS_WARMUP_ON_START": "false",
        "TTS_DEVICE": "cpu",
    }
    settings = parse_settings([], environ=environ)
    engine = settings.engine
    assert (engine.model, settings.torch.attn, engine.interop_threads, engine.warmup) == (
        "/models/x",
        "eager",
        2,
        False,
    )


def test_our_names_win_over_the_legacy_ones():
    settings = parse_settings([], environ={"QWEN3TTS_MODEL": "/a", "TTS_MODEL_ID": "/b"})
    assert settings.engine.model == "/a"


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"CPU_THREADS": "many"}, "CPU_THREADS"),
        ({"TTS_DTYPE": "int3"}, "TTS_DTYPE"),
        ({"TTS_WARMUP_ON_START": "maybe"}, "TTS_WARMUP_ON_START"),
        ({"TTS_DEVICE": "cuda"}, "cpu"),
        ({"USE_IPEX": "1"}, "script/setup --ipex"),
        ({"OV_WEIGHTS": "int3"}, "OV_WEIGHTS"),
    ],
)
def test_bad_environment_values_are_named(environ, needle):
    with pytest.raises(SettingsError, match=needle):
        parse_settings([], environ=environ)


def test_openvino_is_chosen_by_flag_env_or_an_export_dir():
    assert parse_settings(["--backend", "openvino"], environ={}).backend == "openvino"
    assert parse_settings([], environ={"TTS_BACKEND": "openvino"}).backend == "openvino"
    legacy = parse_settings([], environ={"OV_MODEL_DIR": "/ov", "OV_DEVICE": "AUTO", "OV_CACHE_DIR": "/c"})
    openvino = legacy.openvino
    assert (legacy.backend, openvino.model_dir, openvino.device) == ("openvino", Path("/ov"), "AUTO")
    assert openvino.cache_dir == Path("/c") and openvino.weights == "int8"
    assert parse_settings(["--ov-weights", "int4"], environ={}).openvino.weights == "int4"


def test_bad_flag_value_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--dtype", "int3"], environ={})
    assert exit_info.value.code == 2
    assert "--dtype" in capsys.readouterr().err


def test_zeroconf_flag_takes_an_optional_name():
    assert parse_settings(["--zeroconf"], environ={}).wyoming.zeroconf == "qwen3-tts"
    assert parse_settings(["--zeroconf", "kitchen"], environ={}).wyoming.zeroconf == "kitchen"
    assert parse_settings([], environ={}).wyoming.zeroconf is None


def test_warmup_flag_pair():
    assert parse_settings(["--no-warmup"], environ={"TTS_WARMUP_ON_START": "1"}).engine.warmup is False
    assert parse_settings(["--warmup"], environ={"TTS_WARMUP_ON_START": "0"}).engine.warmup is True


def test_compile_is_off_unless_asked_by_flag_or_environment():
    assert parse_settings([], environ={}).torch.compile is False
    assert parse_settings([], environ={"QWEN3TTS_COMPILE": "1"}).torch.compile is True
    assert parse_settings(["--no-compile"], environ={"QWEN3TTS_COMPILE": "1"}).torch.compile is False
    assert parse_settings(["--compile"], environ={}).torch.compile is True


def test_normalize_flag_pair_and_environment():
    assert parse_settings([], environ={}).speech.normalize is True
    assert parse_settings([], environ={"QWEN3TTS_NORMALIZE": "0"}).speech.normalize is False
    assert parse_settings(["--normalize"], environ={"QWEN3TTS_NORMALIZE": "off"}).speech.normalize is True
    assert parse_settings(["--no-normalize"], environ={"QWEN3TTS_NORMALIZE": "1"}).speech.normalize is False
    with pytest.raises(SettingsError, match="QWEN3TTS_NORMALIZE"):
        parse_settings([], environ={"QWEN3TTS_NORMALIZE": "maybe"})


def test_huge_pages_are_on_unless_turned_off():
    assert parse_settings([], environ={}).engine.huge_pages is True
    assert parse_settings([], environ={"QWEN3TTS_HUGE_PAGES": "0"}).engine.huge_pages is False
    assert parse_settings(["--huge-pages"], environ={"QWEN3TTS_HUGE_PAGES": "0"}).engine.huge_pages is True
    assert parse_settings(["--no-huge-pages"], environ={}).engine.huge_pages is False


def test_voices_dir_must_exist(tmp_path):
    with pytest.raises(SettingsError, match="not a directory"):
        parse_settings(["--voices-dir", str(tmp_path / "missing")], environ={})
    assert parse_settings(["--voices-dir", str(tmp_path)], environ={}).engine.voices_dir == Path(tmp_path)


def test_auto_dtype_follows_the_cpu_it_runs_on():
    assert TorchOptions(dtype="auto").resolved_dtype(native_bf16=True) == "bfloat16"
    assert TorchOptions(dtype="auto").resolved_dtype(native_bf16=False) == "float32"
    assert TorchOptions(dtype="float32").resolved_dtype(native_bf16=True) == "float32"


def test_help_lists_every_flag_with_its_environment(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--help"], environ={})
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--no-warmup" in text and "TTS_WARMUP_ON_START" in text and "CPU_THREADS" in text
    assert "%(asctime)s" in text  # the log format default, shown as written


def test_the_backends_are_the_registrys():
    from wyoming_qwen3tts.engine.registry import BACKENDS, option_groups
    from wyoming_qwen3tts.settings import build_parser

    (backend,) = [a for a in build_parser()._actions if a.dest == "backend"]
    assert tuple(backend.choices or ()) == tuple(BACKENDS)
    # Every backend's options are a field of Settings, resolved from that backend's flags.
    assert {group.name for group in option_groups()} <= set(Settings.__dataclass_fields__)
    assert parse_settings(["--ov-device", "GPU"], environ={}).openvino.device == "GPU"


def test_flat_names_read_their_groups():
    settings = parse_settings(
        ["--uri", "tcp://127.0.0.1:1", "--http-uri", "tcp://127.0.0.1:2", "--log-format", "%(message)s"],
        environ={"QWEN3TTS_VOICE": "ryan", "CPU_THREADS": "3"},
    )
    assert settings.uri == settings.wyoming.uri == "tcp://127.0.0.1:1"
    assert settings.http_uri == settings.http.uri == "tcp://127.0.0.1:2"
    assert settings.log_format == settings.log.format == "%(message)s"
    assert settings.voice == "ryan" and settings.model == settings.engine.model
    defaults = Settings()
    for name, attribute in vars(Settings).items():
        if hasattr(attribute, "group"):  # a flat name: it reads a field that exists
            group = getattr(defaults, attribute.group)
            assert getattr(defaults, name) == getattr(group, attribute.field_name), name


def test_settings_import_neither_torch_nor_openvino():
    import subprocess
    import sys

    code = (
        "import sys, wyoming_qwen3tts.settings as s; s.parse_settings([], {}); "
        "print(sorted(m for m in ('torch', 'openvino', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

"""The OpenVINO backend in-process on the tiny models: the same codes, logits and audio as PyTorch float32,
the export's manifest guarding what it serves, the export command's errors, memory-mapped tables.

Exports come from the session's `ov_exports` fixture (each costs about a minute): fp32 of every kind,
fp16 of custom_voice, int8 of custom_voice and voice_design (whose code predictor is narrower than its
talker: the projection between them is quantized too), int4 of custom_voice. Measured (tiny models, mean /
worst cosine of the teacher-forced logits against PyTorch float32): fp32 1.00000 / 1.00000, fp16
1.00000 / 0.99999, int8 0.99970 / 0.99773 (custom_voice) and 0.99944 / 0.99398 (voice_design); fp32
codec SNR ~99 dB for every voice kind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from conftest import assert_logits_agree, cosines, snr_db
from fixtures.tiny_model import build_tiny_model

from wyoming_qwen3tts.engine.loop import FrameGenerator
from wyoming_qwen3tts.engine.openvino import engine as ov_engine_module
from wyoming_qwen3tts.engine.openvino.engine import OpenVINOEngine, default_export_dir
from wyoming_qwen3tts.engine.openvino.export import main as export_main
from wyoming_qwen3tts.engine.openvino.export import read_manifest
from wyoming_qwen3tts.engine.openvino.runtime import OpenVINOSteps, compile_config, exported_tables
from wyoming_qwen3tts.engine.pipeline import CHUNK_SCHEDULE
from wyoming_qwen3tts.engine.prompt import PromptBuilder
from wyoming_qwen3tts.engine.pytorch.engine import PyTorchEngine
from wyoming_qwen3tts.engine.registry import create_engine
from wyoming_qwen3tts.engine.seams import CodeLayout
from wyoming_qwen3tts.requests import EngineError
from wyoming_qwen3tts.settings import EngineOptions, OpenVINOOptions, Settings, TorchOptions
from wyoming_qwen3tts.voices.voice import Voice

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TEXT = "Turn on the kitchen light, please."
FRAMES = 12
GREEDY = {"do_sample": False, "subtalker_dosample": False}

# (kind, voice, language): a preset speaker, a dialect speaker (Sichuan for Chinese), a designed voice,
# an in-context clone (audio + transcript) and an x-vector clone (audio only).
VOICES = [
    ("custom_voice", "ryan", "english"),
    ("custom_voice", "eric", "chinese"),
    ("voice_design", "default", "english"),
    ("base", "anna", "english"),
    ("base", "bob", "english"),
]


def options(tmp: Path, **more) -> EngineOptions:
    return EngineOptions(greedy=True, warmup=False, threads=1, max_frames=FRAMES, data_dir=tmp, **more)


def openvino_engine(tmp: Path, model: Path | str, export: Path | None = None, **ov_options) -> OpenVINOEngine:
    """The OpenVINO engine serving model from export (None: from the export made on first start)."""
    return OpenVINOEngine(options(tmp, model=str(model)), OpenVINOOptions(model_dir=export, **ov_options))


@pytest.fixture(scope="module")
def engines(tiny_models, voices_dir, ov_exports, tmp_path_factory):
    """(PyTorch float32 engine, OpenVINO engine on the fp32 export) per kind, loaded lazily.

    Each has its own data dir: the two share clone prompt cache keys, and the OpenVINO engine must
    build its clone prompts with its own encoders.
    """

    class Engines(dict):
        def __missing__(self, kind: str) -> tuple[PyTorchEngine, OpenVINOEngine]:
            voices = voices_dir if kind == "base" else None
            reference = PyTorchEngine(
                tiny_models[kind],
                options(tmp_path_factory.mktemp("pt"), voices_dir=voices),
                TorchOptions(dtype="float32", quantize="none"),
            )
            on_openvino = OpenVINOEngine(
                options(tmp_path_factory.mktemp("ov"), model=str(tiny_models[kind]), voices_dir=voices),
                OpenVINOOptions(model_dir=ov_exports[kind, "fp32"]),
            )
            self[kind] = (reference, on_openvino)
            return self[kind]

    return Engines()


def voice_of(engine, name: str) -> Voice:
    return next(v for v in engine.voices() if v.name == name)


def greedy_codes(engine, voice: Voice, language: str) -> torch.Tensor:
    return torch.stack(list(engine.frame_generator.frames(engine.prompt(TEXT, voice, language), FRAMES)))


def decode_in_chunks(engine, voice: Voice, codes: torch.Tensor) -> np.ndarray:
    """codes through the engine's decoder for this voice, in the chunk schedule synthesize uses."""
    decoder = engine._decoder_for(voice)
    sizes, schedule, start, pieces = [], iter(CHUNK_SCHEDULE), 0, []
    size = next(schedule)
    while start < codes.shape[0]:
        sizes.append(size)
        pieces.append(decoder.decode(codes[start : start + size]).numpy())
        start += size
        size = next(schedule, size)
    return np.concatenate(pieces).astype(np.float64)


@pytest.mark.parametrize(("kind", "name", "language"), VOICES)
def test_fp32_export_gives_pytorch_greedy_codes_and_audio(engines, kind, name, language):
    reference, exported = engines[kind]
    voice_pt, voice_ov = voice_of(reference, name), voice_of(exported, name)
    prompt_pt = reference.prompt(TEXT, voice_pt, language)
    prompt_ov = exported.prompt(TEXT, voice_ov, language)
    assert prompt_ov.embeds.shape == prompt_pt.embeds.shape
    assert torch.allclose(prompt_ov.embeds, prompt_pt.embeds, atol=1e-4)

    expected = greedy_codes(reference, voice_pt, language)
    got = greedy_codes(exported, voice_ov, language)
    assert got.shape == expected.shape == (FRAMES, 16)
    assert torch.equal(got, expected)

    # The same codes through both codecs (a clone's decoder first hears its reference codes).
    audio_pt = decode_in_chunks(reference, voice_pt, expected)
    audio_ov = decode_in_chunks(exported, voice_ov, expected)
    assert audio_ov.shape == audio_pt.shape == (FRAMES * 1920,)
    snr = snr_db(audio_pt, audio_ov)
    print(f"{kind}/{name}: fp32 codec SNR {snr:.1f} dB")
    assert snr >= 40


def test_synthesize_streams_the_pytorch_audio(engines):
    reference, exported = engines["custom_voice"]
    pcm = [
        np.frombuffer(b"".join(e.synthesize(TEXT, voice_of(e, "ryan"), "english")), "<i2").astype(np.float64)
        for e in (reference, exported)
    ]
    assert pcm[0].size == pcm[1].size == FRAMES * 1920
    assert snr_db(*pcm) >= 40


# --- teacher-forced logits by weight format ---------------------------------------------------------------

# (kind, weights, mean cosine at least, worst cosine at least). int4: see test_int4 below.
LOGIT_CASES = [
    ("custom_voice", "fp32", 0.999, 0.999),
    ("voice_design", "fp32", 0.999, 0.999),
    ("custom_voice", "fp16", 0.999, 0.99),
    ("custom_voice", "int8", 0.99, 0.95),
    ("voice_design", "int8", 0.99, 0.95),
]


@pytest.fixture(scope="module")
def forced_reference(engines):
    """Per kind: the PyTorch float32 greedy codes of the first voice, and its logits along them."""
    cache: dict[str, tuple] = {}

    def get(kind: str):
        if kind not in cache:
            reference, _ = engines[kind]
            voice = reference.voices()[0]
            prompt = reference.prompt(TEXT, voice, "english")
            codes = greedy_codes(reference, voice, "english")
            logits: list[torch.Tensor] = []
            list(reference.frame_generator.frames(prompt, FRAMES, forced=codes, record=logits))
            cache[kind] = (voice, codes, logits)
        return cache[kind]

    return get


def exported_logits(export_dir: Path, kind: str, voice: Voice, codes: torch.Tensor) -> list[torch.Tensor]:
    """The logits of an export's steps and tables along codes (no codec needed)."""
    tables = exported_tables(export_dir)
    prompts = PromptBuilder.from_model_dir(tables, export_dir)
    layout = CodeLayout.from_config(
        prompts.model_config["talker_config"], int(read_manifest(export_dir)["max_positions"])
    )
    steps = OpenVINOSteps(export_dir, ov.Core(), "CPU", compile_config("CPU", 1), layout)
    prompt = prompts.build(
        TEXT,
        "english",
        speaker=voice.speaker if voice.kind == "preset" else None,
        instruct=voice.instruct,
        kind=kind,
        sampling_overrides=GREEDY,
    )
    logits: list[torch.Tensor] = []
    list(FrameGenerator(steps, tables).frames(prompt, FRAMES, forced=codes, record=logits))
    return logits


@pytest.mark.parametrize(("kind", "weights", "mean_min", "worst_min"), LOGIT_CASES)
def test_teacher_forced_logits_agree_with_pytorch_float32(
    ov_exports, forced_reference, kind, weights, mean_min, worst_min
):
    voice, codes, expected = forced_reference(kind)
    got = exported_logits(ov_exports[kind, weights, "steps"], kind, voice, codes)
    assert len(expected) == FRAMES * 16
    assert_logits_agree(expected, got, f"{kind} {weights}", mean_min, worst_min)


def test_int4_logits_measured(ov_exports, forced_reference):
    """int4 is stated, not promised. The floor only says the int4 graphs still compute this model (the
    logits of unrelated random weights have a cosine near 0, int8 measured 0.9997); the printed line is
    the measurement."""
    voice, codes, expected = forced_reference("custom_voice")
    export = ov_exports["custom_voice", "int4", "steps"]  # widths of 64: groups adjusted below 128
    got = exported_logits(export, "custom_voice", voice, codes)
    similarity = cosines(expected, got)
    print(f"custom_voice int4: mean cosine {similarity.mean():.5f}, worst {similarity.min():.5f}")
    assert similarity.mean() >= 0.9
    assert similarity.min() >= 0.5


# --- the manifest: which export serves which model ------------------------------------------------------


def test_an_export_of_another_model_is_refused(tiny_models, ov_exports, tmp_path):
    other = build_tiny_model(tmp_path / "other", "custom_voice", seed=1)
    export = ov_exports["custom_voice", "fp32"]
    with pytest.raises(EngineError) as caught:
        openvino_engine(tmp_path, other, export)
    assert caught.value.code == "export-mismatch"
    message = str(caught.value)
    assert str(export) in message and str(tiny_models["custom_voice"].resolve()) in message
    assert f"wyoming-qwen3tts-export-openvino --model {other} --output {export}" in message
    assert "\n" not in message


def test_ov_model_dir_without_an_export_names_the_command(tiny_models, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    model = str(tiny_models["custom_voice"])
    with pytest.raises(EngineError) as caught:
        openvino_engine(tmp_path, model, empty)
    assert caught.value.code == "no-export"
    assert f"wyoming-qwen3tts-export-openvino --model {model} --output {empty}" in str(caught.value)
    assert not (empty / "manifest.json").exists()


def test_without_ov_model_dir_the_first_load_exports_into_the_data_dir(
    tiny_models, ov_exports, tmp_path, monkeypatch
):
    """The engine's side of exporting on first start; the export itself is the fixture's (exports are
    slow), copied into place by a stand-in. tests/test_server_openvino.py runs the real one."""
    made = ov_exports["custom_voice", "fp32"]
    calls: list[tuple] = []

    def export_model(model_dir, output, weights, progress):
        calls.append((Path(model_dir), Path(output), weights))
        progress("exporting (stand-in)")
        shutil.copytree(made, output)
        return output

    monkeypatch.setattr(ov_engine_module, "export_model", export_model)
    model = tiny_models["custom_voice"]
    expected_dir = tmp_path / "openvino" / "custom_voice-fp32"
    assert (
        default_export_dir(options(tmp_path, model=str(model)), OpenVINOOptions(weights="fp32"))
        == expected_dir
    )

    first = openvino_engine(tmp_path, model, weights="fp32")
    assert calls == [(model, expected_dir, "fp32")]
    assert first.export_dir == expected_dir
    stamp = (expected_dir / "manifest.json").stat().st_mtime_ns
    assert "ryan" in {v.name for v in first.voices()}

    second = openvino_engine(tmp_path, model, weights="fp32")
    assert len(calls) == 1  # reused, not made again
    assert second.export_dir == expected_dir
    assert (expected_dir / "manifest.json").stat().st_mtime_ns == stamp


def test_a_manifest_of_another_format_is_one_clear_error(ov_exports, tiny_models, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(ov_exports["custom_voice", "fp32"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = 999
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="another version of the exporter") as caught:
        openvino_engine(tmp_path, tiny_models["custom_voice"], copy)
    assert "wyoming-qwen3tts-export-openvino" in str(caught.value)


# --- the export command ---------------------------------------------------------------------------------


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error" in line.lower()]


def test_export_command_refuses_unknown_weights(tiny_models, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        export_main(
            [
                "--model",
                str(tiny_models["custom_voice"]),
                "--output",
                str(tmp_path / "x"),
                "--weights",
                "int3",
            ]
        )
    assert caught.value.code == 2
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert "--weights" in line and "int3" in line and "int8" in line
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_export_command_on_a_missing_model_is_one_line(tmp_path, capsys):
    code = export_main(["--model", str(tmp_path / "nothing"), "--output", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("wyoming-qwen3tts-export-openvino: error:") and "nothing" in err
    assert not (tmp_path / "x").exists()


# --- memory-mapped tables -------------------------------------------------------------------------------


def mapped_files(address: int) -> list[str]:
    """The files mapped at address in this process (from /proc/self/maps)."""
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end and len(fields) == 6:
            found.append(fields[5])
    return found


def test_exported_tables_are_memory_mapped(ov_exports):
    export = ov_exports["custom_voice", "fp32"]
    tables = exported_tables(export)
    for tensor, name in (
        (tables._text, "text.npy"),
        (tables._codec, "codec.npy"),
        (tables._predictor_codecs[3], "predictor_codec.npy"),
    ):
        assert mapped_files(tensor.data_ptr()) == [str(export / "tables" / name)]
    # Rows read from the map are the rows in the file.
    stored = np.load(export / "tables" / "text.npy")
    assert torch.equal(tables.text(torch.tensor([5, 77]))[0], torch.from_numpy(stored[[5, 77]]).float())


def test_compile_is_skipped_with_a_warning(tiny_models, ov_exports, tmp_path, caplog):
    """--compile is the pytorch backend's; the OpenVINO engine says so and serves as without it."""
    settings = Settings(
        backend="openvino",
        engine=options(tmp_path, model=str(tiny_models["custom_voice"])),
        torch=TorchOptions(compile=True),
        openvino=OpenVINOOptions(model_dir=ov_exports["custom_voice", "fp32"]),
    )
    exported = create_engine(settings)
    assert isinstance(exported, OpenVINOEngine)
    assert "--compile skipped" in caplog.text and "--backend pytorch" in caplog.text
    assert exported.voices()


@pytest.mark.parametrize(("kind", "name"), [(kind, name) for kind, name, _ in VOICES])
def test_rows_of_a_batch_equal_each_row_alone(engines, kind, name):
    """The exported predictor steps every row in flight in one call: each row's greedy codes are its
    codes alone (and the PyTorch engine's), with rows of different lengths joining mid-way."""
    from test_batching import TEXTS, batched

    reference, exported = engines[kind]
    assert exported.frame_generator.steps.predictor_batches
    voice_pt, voice_ov = voice_of(reference, name), voice_of(exported, name)
    # batched() speaks English, as the PyTorch engine's batching test does.
    expected = [torch.stack(list(reference.frames(text, voice_pt, "english"))) for text in TEXTS]
    got = batched(exported, TEXTS, voice_ov, joins=[0, 2, 5])
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and torch.equal(have, want)


def test_an_export_whose_predictor_keeps_state_still_runs_row_by_row(
    tiny_models, forced_reference, tmp_path, monkeypatch
):
    """Exports made before the predictor batched keep its keys and values as OpenVINO state: they load
    and compute the same logits, one row a call."""
    from wyoming_qwen3tts.engine.openvino import codec, encoders, export

    voice, codes, expected = forced_reference("custom_voice")  # before the patches: it exports too
    convert = export._convert_step
    monkeypatch.setattr(export, "_convert_step", lambda *args, **kwargs: convert(*args[:5], stateful=True))
    monkeypatch.setattr(codec, "export_codec", lambda *args, **kwargs: None)
    monkeypatch.setattr(encoders, "export_encoders", lambda *args, **kwargs: None)
    old = export.export_model(tiny_models["custom_voice"], tmp_path / "old", "fp32", progress=lambda _: None)
    layout = CodeLayout.from_config(
        PromptBuilder.from_model_dir(exported_tables(old), old).model_config["talker_config"], 64
    )
    assert not OpenVINOSteps(old, ov.Core(), "CPU", compile_config("CPU", 1), layout).predictor_batches
    voice, codes, expected = forced_reference("custom_voice")
    assert_logits_agree(
        expected, exported_logits(old, "custom_voice", voice, codes), "stateful", 0.999, 0.999
    )

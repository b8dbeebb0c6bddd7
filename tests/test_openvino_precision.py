"""The precision OpenVINO computes in is the one --dtype chose, on every CPU, and the log says which.

Left to itself the CPU plugin computes in bf16 wherever the CPU has native bf16 (AVX512-BF16, AMX): an
"fp32" export then ran in bf16 there (19 dB SNR against torch on the tiny codec), and one compile died
with SIGFPE. So the engine always sets the hint, and states what the compiled model reports.
"""

from __future__ import annotations

import logging

import openvino as ov
import pytest
from openvino_child import check_compiles_in_child

from wyoming_qwen3tts.engine.openvino.engine import OpenVINOEngine
from wyoming_qwen3tts.engine.openvino.options import OpenVINOOptions
from wyoming_qwen3tts.engine.openvino.runtime import (
    PRECISION_HINTS,
    compile_config,
    compiled_precision,
    inference_precision,
)
from wyoming_qwen3tts.engine.options import DTYPES, EngineOptions

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def native_bf16() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_auto_is_f32_on_every_cpu():
    assert inference_precision("auto") == "f32"  # pinned: not chosen by the CPU the test runs on
    assert {dtype: inference_precision(dtype) for dtype in DTYPES} == {
        "auto": "f32",
        "float32": "f32",
        "bfloat16": "bf16",
        "float16": "f16",
    }
    assert set(PRECISION_HINTS) == set(DTYPES)


def test_the_cpu_config_always_names_a_precision():
    assert compile_config("CPU", 2)["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config("cpu", 2, "bf16")["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "INFERENCE_PRECISION_HINT" not in compile_config("GPU", 2)  # another plugin's own choice


@pytest.mark.parametrize("asked", ["f32", "bf16"])
def test_the_compiled_talker_reports_the_precision_it_runs(ov_exports, asked):
    talker = ov_exports["custom_voice", "fp32", "steps"] / "talker.xml"
    config = compile_config("CPU", 1, asked)
    check_compiles_in_child([talker], config)
    got = compiled_precision(ov.Core().compile_model(talker, "CPU", config))
    expected = asked if asked == "f32" or native_bf16() else "f32"  # no native bf16: OpenVINO runs f32
    assert got == expected


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_the_engine_logs_the_precision_it_computes_in(ov_exports, tiny_models, tmp_path, caplog, dtype):
    model = str(tiny_models["custom_voice"])
    options = EngineOptions(model=model, warmup=False, threads=1, data_dir=tmp_path)
    export = ov_exports["custom_voice", "fp32"]
    config = compile_config("CPU", 1, inference_precision(dtype))
    check_compiles_in_child(sorted(export.glob("*.xml")), config)
    with caplog.at_level(logging.INFO):
        OpenVINOEngine(options, OpenVINOOptions(model_dir=export, dtype=dtype))
    runs = "bf16" if dtype == "bfloat16" and native_bf16() else "f32"
    assert f"inference precision {runs};" in caplog.text
    warned = "this CPU computes in f32" in caplog.text
    assert warned == (dtype == "bfloat16" and runs == "f32")

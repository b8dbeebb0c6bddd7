"""Compile (and run once) OpenVINO IR files in a child process, so that a native crash fails one test.

OpenVINO's CPU plugin picks kernels by CPU features: on an AMX CPU one compile of the tiny codec died
with SIGFPE, which in the pytest process would end the whole run without a summary. Tests compile an
IR here first; if the child dies, the test fails with the signal and the config, and the run goes on.

Run as a script: python openvino_child.py CONFIG_JSON XML...
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def check_compiles_in_child(paths: list[Path], config: dict, timeout: float = 600) -> None:
    """pytest.fail, naming the file, config and signal, if compiling and running paths kills a child."""
    result = subprocess.run(
        [sys.executable, __file__, json.dumps(config), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        pytest.fail(
            f"OpenVINO died with {name} in a child process compiling or running "
            f"{result.stdout.strip().splitlines()[-1] if result.stdout.strip() else paths} with {config}; "
            f"in the test process it would have ended the whole run.\n{result.stderr[-2000:]}"
        )
    if result.returncode != 0:
        pytest.fail(f"compiling {paths} with {config} failed in a child process:\n{result.stderr[-3000:]}")


def _compile_and_run(config: dict, paths: list[str]) -> None:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    for path in paths:
        print(path, flush=True)  # the last line printed names the file a crash happened in
        compiled = core.compile_model(path, "CPU", config)
        request = compiled.create_infer_request()
        inputs = []
        for port in compiled.inputs:
            shape = [1 if dim.is_dynamic else dim.get_length() for dim in port.get_partial_shape()]
            inputs.append(np.zeros(shape, dtype=port.get_element_type().to_dtype()))
        try:
            request.infer(inputs)
        except RuntimeError as err:  # a shape these zeros do not fit (an encoder's window): not a crash
            print(f"{path}: not run on zeros: {str(err).strip().splitlines()[-1]}", file=sys.stderr)


if __name__ == "__main__":
    _compile_and_run(json.loads(sys.argv[1]), sys.argv[2:])

"""engine/native.py: our C++ operators built once per source and torch, or a clear reason why not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wyoming_qwen3tts.engine import native


@pytest.mark.parametrize("source", native.SOURCES, ids=lambda source: source.stem)
def test_a_missing_compiler_is_named_with_the_fix(tmp_path, monkeypatch, source):
    monkeypatch.setenv("QWEN3TTS_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(native.KernelUnavailable, match=r"no C\+\+ compiler \(no-such-compiler\).*g\+\+"):
        native.build(source)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_build_says_why_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'fatal error: out of paper' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("QWEN3TTS_KERNEL_DIR", str(tmp_path / "kernels"))
    monkeypatch.setenv("CXX", str(compiler))
    with pytest.raises(native.KernelUnavailable, match="snake kernel failed:\nfatal error: out of paper"):
        native.build(native.SNAKE)
    assert list((tmp_path / "kernels").iterdir()) == []


def test_a_build_is_kept_by_source_and_torch(tmp_path, monkeypatch):
    """A second build finds the first; the library's name changes with the source."""
    monkeypatch.setenv("QWEN3TTS_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")  # a build would fail: only the kept one can be found
    kept = native.library_path(native.INT8_PRODUCT)
    kept.write_bytes(b"")
    assert native.build(native.INT8_PRODUCT) == kept
    other = tmp_path / "int8_kernel.cpp"
    other.write_text("// another source\n")
    assert native.library_path(other) != kept
    assert native.library_path(native.SNAKE) != kept


def test_the_set_up_command_builds_every_operator(tmp_path):
    """What script/setup runs: each library built into QWEN3TTS_KERNEL_DIR and named in the log."""
    result = subprocess.run(
        [sys.executable, "-m", "wyoming_qwen3tts.engine.native"],
        capture_output=True,
        text=True,
        env={**os.environ, "QWEN3TTS_KERNEL_DIR": str(tmp_path)},
        timeout=native.BUILD_SECONDS * 2,
    )
    assert result.returncode == 0, result.stderr
    built = sorted(path.name.split("-")[0] for path in tmp_path.glob("*.so"))
    assert built == sorted(source.stem for source in native.SOURCES)
    for source in native.SOURCES:
        assert f"{source.name}: {tmp_path}" in result.stderr


def test_a_library_that_will_not_load_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN3TTS_KERNEL_DIR", str(tmp_path))
    source = tmp_path / "broken_kernel.cpp"
    source.write_text("// not what the file below was built from\n")
    native.library_path(source).write_bytes(b"not a library")
    result = native.loaded(source)
    assert isinstance(result, native.KernelUnavailable) and "loading broken_kernel failed" in str(result)

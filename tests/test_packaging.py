"""What the wheel holds: every folder of the server's package, and nothing of the tests or benchmarks.

setuptools finds packages by their __init__.py: a folder without one (http/ had none) is silently left
out of the wheel, while an editable install still works. The Dockerfile copies the package alone.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_every_folder_of_the_package_is_a_package_the_wheel_finds():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    include = config["options.packages.find"]["include"].split()
    found = set(find_packages(str(ROOT), include=include))
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "wyoming_qwen3tts").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert folders <= found, f"not in the wheel: {sorted(folders - found)}"
    assert all(name.split(".")[0] == "wyoming_qwen3tts" for name in found)  # no tests, no benchmarks


def test_the_image_copies_only_the_package_and_its_scripts():
    copies = [
        line.split()[1:-1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY")
    ]
    copied = {item.rstrip("/") for sources in copies for item in sources}
    assert copied == {"setup.cfg", "pyproject.toml", "README.md", "script", "wyoming_qwen3tts"}

"""Fixtures of the CLI guard tests: the tiny model's ranges, and a snapshot of every input file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from qonnx_bert.cli import main


@pytest.fixture(scope="session")
def tiny_ranges(tiny_onnx, tmp_path_factory) -> Path:
    """Ranges of the tiny model from 4 shipped sentences, written by the CLI."""
    out = tmp_path_factory.mktemp("tiny_ranges") / "ranges.json"
    assert main(["calibrate", str(tiny_onnx), "-n", "4", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def snapshot():
    """The function below, for tests that must prove no input changed."""
    return hash_tree


def hash_tree(*folders: Path) -> dict[str, str]:
    """Path -> sha256 of every file (and "dir" for every folder) under ``folders``: what a command may not change."""
    found = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")] if folder.is_dir() else [folder]:
            found[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found

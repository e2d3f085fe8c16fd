"""Safe output files: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qonnx_bert.core.errors import UsageError


@contextlib.contextmanager
def atomic_output(path: str | Path, *, inputs: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path; rename it onto ``path`` only if the block succeeds.

    A crash or an error leaves no half-written file behind. ``inputs`` are the
    files the command reads: writing onto one of them is refused, so an input is
    never overwritten.
    """
    path = Path(path)
    for src in inputs:
        if Path(src).exists() and path.exists() and os.path.samefile(src, path):
            raise UsageError(f"output {path} is the input file; choose another output path with -o")
        if Path(src).resolve() == path.resolve():
            raise UsageError(f"output {path} is the input file; choose another output path with -o")
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def read_json_object(path: str | Path, what: str, hint: str) -> dict:
    """A JSON object read from ``path``; one-line errors that name ``what`` it should be and ``hint`` how to make one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found; {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path} is not JSON; {hint}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a {what}; {hint}")
    return data

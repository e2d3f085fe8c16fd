"""Where qonnx's editable data lives and where it writes what it builds.

The fine-tune recipes (``models/``) and calibration recipes (``calibration/``) stay
editable JSON at the top of the repository. The wheel maps them into the package as
``qonnx_bert/recipes/models`` and ``qonnx_bert/recipes/calibration`` (pyproject's
``package-dir``), so an installed copy finds them there and a source checkout (an
editable install, or ``PYTHONPATH``) finds them beside the package. Built checkpoints
and caches never go into the package: they go to the user cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_VARIABLE = "QONNX_CACHE_DIR"
SHIPPED_FOLDERS = ("models", "calibration")


def shipped_dir(folder: str) -> Path:
    """``models`` or ``calibration``: the installed copy inside the package, else the checkout's folder."""
    if folder not in SHIPPED_FOLDERS:
        raise ValueError(f"unknown shipped folder {folder!r}")
    package = Path(__file__).resolve().parents[1]
    installed = package / "recipes" / folder
    return installed if installed.is_dir() else package.parent / folder


def cache_dir() -> Path:
    """``$QONNX_CACHE_DIR``, else the platform's user cache directory (``platformdirs`` when it is
    installed; otherwise ``$XDG_CACHE_HOME/qonnx`` or ``~/.cache/qonnx``)."""
    if os.environ.get(CACHE_DIR_VARIABLE):
        return Path(os.environ[CACHE_DIR_VARIABLE]).expanduser()
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "qonnx"
    return Path(platformdirs.user_cache_dir("qonnx", appauthor=False))

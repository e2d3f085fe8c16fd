"""Optional dependencies: a one-line error naming the extra to install."""

from __future__ import annotations

from qonnx_bert.core.errors import UsageError


def require_matplotlib(flag: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"{flag} needs matplotlib: pip install 'qonnx-bert[plot]'") from None

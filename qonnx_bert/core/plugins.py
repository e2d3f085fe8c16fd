"""Third-party extensions through entry points: listed without importing, loaded on first lookup."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from qonnx_bert.core.errors import UsageError


def plugin_entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def load_plugin(group: str, name: str, kind: str, valid: Callable[[Any], bool], shape: str, known: list[str]) -> Any:
    """The object entry point ``name`` of ``group`` points to, checked by ``valid``.

    One-line errors name the ``kind`` of plugin: unknown (listing ``known``), failing to
    load, or not of the ``shape`` qonnx needs.
    """
    ep = plugin_entry_points(group).get(name)
    if ep is None:
        raise UsageError(f"unknown {kind} {name!r}; known: {', '.join(known)}")
    try:
        obj = ep.load()
    except Exception as err:  # a broken plugin is the user's environment, not our bug
        raise UsageError(f"{kind} plugin {name!r} ({ep.value}) failed to load: {err}") from err
    if not valid(obj):
        raise UsageError(f"{kind} plugin {name!r} ({ep.value}) is not {shape}")
    return obj

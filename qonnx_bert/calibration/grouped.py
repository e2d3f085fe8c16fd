"""A ranges table that also carries per-group ranges (PEG's K groups of embedding dimensions).

``calibrate(..., groups={role: [[dims...], ...]})`` fills ``per_group[role]`` with
``{"tensor", "estimator", "groups", "min", "max"}``: one range per index set, from
the same estimator as the tensor's per-tensor range, at ``PerGroup`` granularity.
``RangeTable`` readers that do not know the section ignore it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qonnx_bert.calibration.ranges import RangeTable


@dataclass
class GroupedRangeTable(RangeTable):
    """``RangeTable`` plus ``per_group`` (written as the ranges file's ``per_group`` section)."""

    per_group: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**super().to_json(), "per_group": self.per_group}

    @classmethod
    def load(cls, path: str | Path) -> GroupedRangeTable:
        table = super().load(path)
        table.per_group = json.loads(Path(path).read_text()).get("per_group", {})
        return table

"""bench/large_geometry.py at a tiny geometry: the script runs end to end and records what it claims."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "large_geometry.py"


def test_large_geometry_bench_records_rss_and_time(tmp_path):
    spec = importlib.util.spec_from_file_location("large_geometry", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--geometry", "tiny", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "r")]) == 0
    run = json.loads((tmp_path / "r.json").read_text())["runs"]["tiny"]
    assert run["geometry"] == {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "vocabulary": 30522}
    for step in ("calibrate", "quantize_peg"):
        assert run[step]["seconds"] > 0 and run[step]["peak_rss_mb"] > 50  # a Python process with ORT loaded
    assert 0 < run["peg_mb"] < run["fp32_mb"]  # int8 weights
    assert "| tiny |" in (tmp_path / "r.md").read_text()

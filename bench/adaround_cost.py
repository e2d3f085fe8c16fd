"""Time and peak memory of AdaRound at MiniLM-L6 and BERT-base geometry (issue 21), against plain W4 rounding.

    .venv/bin/python bench/adaround_cost.py                       # minilm-l6 and base (committed)
    .venv/bin/python bench/adaround_cost.py --geometry tiny --iterations 10 --out /tmp/x   # seconds

For each geometry (a BERT classifier with seeded random weights, built and calibrated as
``bench/large_geometry.py`` does, 64 sequences of 128 tokens), ``qonnx quantize --scheme w8a32
--weight-bits 4`` runs, each its own process: round to nearest, then ``--adaround N`` at the two
``--iterations``. ``os.wait4`` gives each its peak RSS, the wall clock its time. AdaRound adds
a fixed part (the Gram matrix of every linear layer's input: one calibration replay, all held,
float64) and ``N`` Adam steps per layer, each one ``K x K x N_out`` product: the two runs'
difference gives the time per step, scaled to AdaRound's default of 1000, and what is left over
the round-to-nearest run is the fixed part. Random weights: the cost, not the accuracy.
Writes ``OUT.json`` and ``OUT.md`` (default ``bench/results/adaround-cost``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from large_geometry import CACHE, GEOMETRIES, ROOT, _qonnx, _size_mb, build, write_texts

from qonnx_bert.core.files import atomic_output


def _linear_macs(name: str) -> int:
    """Multiply-adds of one AdaRound step over every encoder linear layer: sum of K*K*N."""
    layers, hidden, _, ffn, _ = GEOMETRIES[name]
    return layers * (4 * hidden**3 + hidden**2 * ffn + ffn**2 * hidden)


def measure(name: str, cache: Path, texts: Path, iterations: tuple[int, int]) -> dict:
    model = build(name, cache)
    ranges = cache / f"{name}.ranges.json"
    if not ranges.is_file():
        _qonnx(["calibrate", str(model), "--texts", str(texts), "-n", "64", "-o", str(ranges)])
    base = ["quantize", str(model), "--scheme", "w8a32", "--weight-bits", "4", "--ranges", str(ranges)]
    nearest = _qonnx([*base, "-o", str(cache / f"{name}.w4.onnx")])
    learned = [_qonnx([*base, "--adaround", str(n), "-o", str(cache / f"{name}.w4-ada{n}.onnx")]) for n in iterations]
    per_step = (learned[1]["seconds"] - learned[0]["seconds"]) / (iterations[1] - iterations[0])
    return {
        "geometry": dict(zip(("layers", "hidden", "heads", "ffn", "vocabulary"), GEOMETRIES[name], strict=True)),
        "fp32_mb": _size_mb(model),
        "iterations": list(iterations),
        "round_to_nearest": nearest,
        "adaround": learned,
        "fixed_seconds": round(learned[0]["seconds"] - nearest["seconds"] - per_step * iterations[0], 1),
        "seconds_per_1000_iterations": round(per_step * 1000, 1),
        "gmac_per_step": round(_linear_macs(name) / 1e9, 2),
    }


def markdown(results: dict) -> str:
    lines = [
        "Time and peak RSS of `qonnx quantize --scheme w8a32 --weight-bits 4` without and with "
        "`--adaround N`, each its own process (random-weight BERT, 64 x 128-token calibration "
        f"sequences). Machine: {results['machine']}.",
        "",
        f"`{results['command']}`",
        "",
        "| geometry | FP32 MB | nearest s | nearest peak MB | N | AdaRound s | AdaRound peak MB "
        "| AdaRound fixed s | AdaRound s per 1000 steps | GMAC per step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["runs"].items():
        n, a = r["round_to_nearest"], r["adaround"]
        cells = [name, r["fp32_mb"], n["seconds"], n["peak_rss_mb"], " / ".join(map(str, r["iterations"]))]
        cells += [" / ".join(str(x["seconds"]) for x in a), max(x["peak_rss_mb"] for x in a)]
        cells += [r["fixed_seconds"], r["seconds_per_1000_iterations"], r["gmac_per_step"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", action="append", choices=sorted(GEOMETRIES), help="default: minilm-l6, base")
    p.add_argument(
        "--iterations", type=int, nargs=2, default=[50, 150], help="two AdaRound step counts (default 50 150)"
    )
    p.add_argument("--cache", type=Path, default=CACHE, help="exports built once here (as large_geometry.py)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "adaround-cost")
    args = p.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    texts = write_texts(args.cache / "large-geometry-texts.txt", 64)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python bench/adaround_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "runs": {
            name: measure(name, args.cache, texts, tuple(args.iterations))
            for name in args.geometry or ("minilm-l6", "base")
        },
    }
    with atomic_output(args.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    with atomic_output(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

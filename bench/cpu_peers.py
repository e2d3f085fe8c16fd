"""qonnx's CPU models against what a CPU user gets from ONNX Runtime itself, in one run (issue 20).

For each fine-tuned recipe (``qonnx models build minilm-l6-<task>`` first) this builds

* ``fp32-torchscript``: ``torch.onnx.export(dynamo=False)``, opset 17 (what Optimum and most tutorials give);
* ``fp32-ort-fused``: that file through ONNX Runtime's transformer optimizer (EmbedLayerNormalization,
  Attention, SkipLayerNormalization, BiasGelu): the fastest FP32 a user can get;
* ``ort-dynamic``: ``quantize_dynamic`` (per-channel int8 weights, uint8 activations ranged per call) on the
  fused graph: Optimum's ``avx512_vnni`` preset, what a CPU user picks today;
* ``ort-dynamic-vln``: that model with its SkipLayerNormalization kernels decomposed as qonnx's ``--target cpu``
  decomposes its own (``passes.cpu_fusion.vectorized_layer_norms``): a control that says how much of qonnx's
  speed comes from avoiding that kernel rather than from static ranges (no Optimum preset gives it);
* ``ort-static``: ``quantize_static`` QDQ, MinMax over the same calibration sequences, per-channel weights:
  ONNX Runtime's default static flow;
* qonnx's own: ``qonnx export`` + ``qonnx calibrate`` + the schemes in ``--schemes`` (``qonnx-smoothquant``:
  SmoothQuant's smoothing of the MatMul inputs, ``-a0.75`` / ``-auto`` its other alphas);

scores every model on the task's full dev set (the peers carry qonnx's tokenizer record, nothing else of
qonnx), and times all of them side by side, interleaved, at each ``--shapes`` batch x length on the CPU
provider (``qonnx_bert.benchmarks.latency``). Writes ``OUT.json`` and ``OUT.md``.

    python bench/cpu_peers.py --tasks stsb rte mrpc cola --data-dir ../shared/data/glue \
        --out bench/results/cpu-peers-minilm-l6
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

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from qonnx_bert import api
from qonnx_bert.benchmarks.latency import side_by_side_latency_ms
from qonnx_bert.core.files import atomic_output
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import glue_train_sequences, sequence_feeds
from qonnx_bert.passes.cpu_fusion import vectorized_layer_norms
from qonnx_bert.quantize import config_from_dict

PEERS = ("fp32-torchscript", "fp32-ort-fused", "ort-dynamic", "ort-dynamic-vln", "ort-static")
SCHEMES = {
    "qonnx-w8a8": {"scheme": "w8a8"},
    "qonnx-peg": {"scheme": "peg"},
    "qonnx-w8a8-cpu": {"scheme": "w8a8", "target": "cpu"},
    "qonnx-peg-cpu": {"scheme": "peg", "target": "cpu"},
    "qonnx-peg-cpu-k2": {"scheme": "peg", "target": "cpu", "groups": 2},
    "qonnx-smoothquant": {"scheme": "smoothquant", "alpha": 0.5},  # SmoothQuant's own default
    "qonnx-smoothquant-a0.75": {"scheme": "smoothquant", "alpha": 0.75},
    "qonnx-smoothquant-auto": {"scheme": "smoothquant", "alpha": "auto"},
}


def torchscript_export(recipe: str, path: Path) -> None:
    import torch

    from qonnx_bert.inputs.models import load_for_export, resolve_model

    model, tokenizer = load_for_export(resolve_model(recipe))
    enc = tokenizer(["a cat", "a cat sat on the mat"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(
        model,
        tuple(enc[n] for n in names),
        str(path),
        input_names=names,
        output_names=["logits"],
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        opset_version=17,
        dynamo=False,
    )


def with_record(path: Path, record_from: onnx.ModelProto) -> None:
    """Give a peer file qonnx's tokenizer record (metadata only) so the same evaluator reads it."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.extend(record_from.metadata_props)
    onnx.save(model, str(path))


class _Reader:
    """ORT's calibration reader over the calibration sequences qonnx uses, one sequence per batch."""

    def __init__(self, encoder: Encoder, sequences) -> None:
        self._feeds = iter(list(sequence_feeds(encoder, sequences)))

    def get_next(self):
        return next(self._feeds, None)


def build_peers(recipe: str, work: Path, fp32: onnx.ModelProto, sequences) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.transformers.optimizer import optimize_model

    ts, fused = work / "fp32-torchscript.onnx", work / "fp32-ort-fused.onnx"
    if not ts.exists():
        torchscript_export(recipe, ts)
        with_record(ts, fp32)
    if not fused.exists():
        from transformers import AutoConfig

        from qonnx_bert.inputs.models import resolve_model

        config = AutoConfig.from_pretrained(resolve_model(recipe).path)
        optimized = optimize_model(
            str(ts), "bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
        )
        optimized.save_model_to_file(str(fused))
        with_record(fused, fp32)
    if not (work / "ort-dynamic.onnx").exists():
        quantize_dynamic(
            str(fused),
            str(work / "ort-dynamic.onnx"),
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # else it fails on contrib-op outputs
        )
        with_record(work / "ort-dynamic.onnx", fp32)
    if not (work / "ort-dynamic-vln.onnx").exists():
        dynamic = ir.load(work / "ort-dynamic.onnx")
        vectorized_layer_norms(dynamic)
        ir.save(dynamic, work / "ort-dynamic-vln.onnx")
    if not (work / "ort-static.onnx").exists():
        quantize_static(
            str(ts),
            str(work / "ort-static.onnx"),
            _Reader(Encoder.from_model(fp32), sequences),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        with_record(work / "ort-static.onnx", fp32)


def build_task(task: str, args) -> dict[str, Path]:
    recipe = f"minilm-l6-{task}"
    work = Path(args.work) / task
    work.mkdir(parents=True, exist_ok=True)
    fp32_path = work / "fp32-qonnx.onnx"
    if not fp32_path.exists():
        api.export(recipe, fp32_path)
    fp32 = onnx.load(str(fp32_path))
    sequences = glue_train_sequences(task, args.data_dir, args.num_sequences, 0)
    ranges_path = work / "ranges.json"
    if not ranges_path.exists():
        from qonnx_bert.calibration.calibrate import calibrate

        calibrate(fp32, sequences, progress=False).save(ranges_path)
    build_peers(recipe, work, fp32, sequences)
    from qonnx_bert.calibration.ranges import RangeTable

    ranges = RangeTable.load(ranges_path)
    paths = {name: work / f"{name}.onnx" for name in PEERS}
    for name in args.schemes:
        path = work / f"{name}.onnx"
        if not path.exists() or args.rebuild:
            api.quantize(fp32, config_from_dict(SCHEMES[name]), ranges, output=path)
        paths[name] = path
    return paths


def scores(task: str, paths: dict[str, Path], args) -> dict[str, float]:
    out = {}
    for name, path in paths.items():
        started = time.perf_counter()
        out[name] = api.evaluate(path, task, args.data_dir).metrics["score"]
        print(f"  {task} {name}: {out[name]:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return out


def latency(paths: dict[str, Path], shapes: list[tuple[int, int]], runs: int) -> dict[str, dict[str, float]]:
    """Median ms per model per shape, all models interleaved (random token ids; latency does not read them)."""
    models = {name: onnx.load(str(p)) for name, p in paths.items()}
    rng = np.random.default_rng(0)
    out = {}
    for batch, length in shapes:
        feeds = {
            "input_ids": rng.integers(1000, 20000, (batch, length)).astype(np.int64),
            "attention_mask": np.ones((batch, length), np.int64),
            "token_type_ids": np.zeros((batch, length), np.int64),
        }
        out[f"{batch}x{length}"] = side_by_side_latency_ms(models, feeds, runs=runs, threads=2)
        print(f"  latency {batch}x{length}: " + ", ".join(f"{k} {v:.1f}" for k, v in out[f"{batch}x{length}"].items()))
    return out


def machine() -> dict:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    name = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    return {
        "cpu": name,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx2": " avx2" in flags,
        "cores": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }


def render(results: dict) -> str:
    names = results["models"]
    tasks = list(results["scores"])
    shapes = list(results["latency_ms"])
    ref = "fp32-ort-fused"
    means = ["mean"] if tasks else []  # --no-scores: latency columns only
    head = ["model", *tasks, *means, *[f"ms {s}" for s in shapes], *[f"x ORT-fused FP32 {s}" for s in shapes]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        row = [results["scores"][t].get(name) for t in tasks]
        mean = float(np.mean(row)) if row and all(v is not None for v in row) else None
        cells = [name] + [f"{v:.2f}" if v is not None else "—" for v in row]
        cells += [f"{mean:.2f}" if mean is not None else "—"] if tasks else []
        cells += [f"{results['latency_ms'][s][name]:.1f}" for s in shapes]
        cells += [f"{results['latency_ms'][s][ref] / results['latency_ms'][s][name]:.2f}" for s in shapes]
        lines.append("| " + " | ".join(cells) + " |")
    m = results["machine"]
    return "\n".join(
        [
            "# qonnx on the CPU provider against ONNX Runtime's own recipes",
            "",
            f"`{results['command']}` at commit {m['commit']}, {m['cpu']} ({m['cores']} cores, "
            f"AVX-512 VNNI: {'yes' if m['avx512_vnni'] else 'no'}), onnxruntime {m['onnxruntime']}, 2 threads.",
            "Scores: full GLUE dev sets (STS-B Spearman x100, CoLA MCC x100, else accuracy x100).",
            "Latency: median ms of one session.run, all models interleaved in one run",
            f"({results['runs']} timed runs each), random token ids, no padding. Speed-up is against",
            "ONNX Runtime's fused FP32 graph, the fastest FP32 a user gets.",
            "",
            *lines,
            "",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["stsb"])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--work", default="bench/work/cpu-peers")
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    p.add_argument("--shapes", nargs="+", default=["1x128", "8x128", "1x256"])
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--num-sequences", type=int, default=64)
    p.add_argument("--rebuild", action="store_true", help="re-quantize qonnx's models (after a code change)")
    p.add_argument("--no-scores", action="store_true", help="latency only")
    p.add_argument("--out", default="bench/results/cpu-peers-minilm-l6")
    args = p.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    paths = {task: build_task(task, args) for task in args.tasks}
    results = {
        "command": "python bench/cpu_peers.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "models": list(paths[args.tasks[0]]),
        "runs": args.runs,
        "scores": {} if args.no_scores else {t: scores(t, paths[t], args) for t in args.tasks},
        "latency_ms": {},
    }
    results["latency_ms"] = latency(paths[args.tasks[0]], shapes, args.runs)
    out = Path(args.out)
    with atomic_output(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    with atomic_output(out.with_suffix(".md")) as tmp:
        tmp.write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()

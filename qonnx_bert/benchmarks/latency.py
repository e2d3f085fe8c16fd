"""Latency and agreement of ONNX models on the CPU provider (used by the demo and the benches)."""

from __future__ import annotations

import time

import numpy as np
import onnx

from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder


def full_length_feeds(encoder: Encoder, text: str, seq_len: int = 128) -> dict[str, np.ndarray]:
    """A batch-1 input of exactly ``seq_len`` real tokens (no padding): the latency workload."""
    ids = encoder.tokenizer.encode((text + " ") * seq_len).ids
    ids = ids[:-1][: seq_len - 1] + ids[-1:]  # keep [CLS] ... [SEP]
    feeds = {
        "input_ids": np.asarray([ids], np.int64),
        "attention_mask": np.ones((1, seq_len), np.int64),
        "token_type_ids": np.zeros((1, seq_len), np.int64),
    }
    return {k: v for k, v in feeds.items() if k in encoder.input_names}


def median_latency_ms(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, runs: int = 30, warmup: int = 5, threads: int | None = None
) -> float:
    """Median wall time of one ``session.run`` in milliseconds."""
    return side_by_side_latency_ms({"model": model}, feeds, runs=runs, warmup=warmup, threads=threads)["model"]


def side_by_side_latency_ms(
    models: dict[str, onnx.ModelProto],
    feeds: dict[str, np.ndarray],
    *,
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    block: int = 10,
) -> dict[str, float]:
    """Median wall time of one ``session.run`` of each model, in milliseconds, timed in interleaved rounds.

    Each round runs every model for a block of ``block`` timed runs (in a rotating order),
    so a change in the machine's load during the measurement (a shared 2-core box) falls
    on all models alike and the ratios between them stay comparable; timing one model
    after another does not. Each block starts with one untimed run: ONNX Runtime's
    worker threads spin for a while after a run, and the previous model's spinning
    threads would otherwise be timed against the next model (on 2 cores that doubled
    the times of single interleaved runs, measured).
    """
    sessions = {name: cpu_session(model, threads) for name, model in models.items()}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feeds)
    names = list(sessions)
    times: dict[str, list[float]] = {name: [] for name in names}
    block = max(1, min(block, runs))
    for r in range(-(-runs // block)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sessions[name].run(None, feeds)
            for _ in range(block):
                start = time.perf_counter()
                sessions[name].run(None, feeds)
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}

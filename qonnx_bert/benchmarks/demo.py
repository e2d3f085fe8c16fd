"""``qonnx demo``: the whole job on the packaged MiniLM-L6, with no data directory.

Export -> calibrate on the shipped sentences -> quantize (W8A8) -> run FP32 and
quantized in ONNX Runtime -> a small table of size, latency and agreement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.benchmarks.latency import full_length_feeds, median_latency_ms
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.core.files import atomic_output
from qonnx_bert.core.metrics import argmax_agreement, sqnr_db
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
from qonnx_bert.quantize import config_for, quantize

logger = logging.getLogger(__name__)

DEMO_SCHEMES = ("w8a8",)


@dataclass(frozen=True)
class DemoRow:
    name: str
    size_mb: float
    latency_ms: float
    sqnr_db: float
    agreement: float


def _logits(model: onnx.ModelProto, sentences: list[str]) -> np.ndarray:
    encoder, session = Encoder.from_model(model), cpu_session(model)
    return np.concatenate([session.run(None, encoder.feeds([s]))[0] for s in sentences])


def run_demo(workdir: Path, source: str = "minilm-l6", runs: int = 20) -> list[DemoRow]:
    """Build every artifact in ``workdir`` and return one table row per model."""
    workdir.mkdir(parents=True, exist_ok=True)
    fp32_path = workdir / "model.onnx"
    export_model(source, fp32_path)
    fp32 = onnx.load(str(fp32_path))
    sentences = shipped_sentences()
    table = calibrate(fp32, sample_sequences(sentences, None, len(sentences), 0, "shipped"))
    table.save(workdir / "ranges.json")
    feeds = full_length_feeds(Encoder.from_model(fp32), sentences[0])
    reference = _logits(fp32, sentences)
    rows = [
        DemoRow("fp32", fp32_path.stat().st_size / 1e6, median_latency_ms(fp32, feeds, runs=runs), float("inf"), 1.0)
    ]
    for scheme in DEMO_SCHEMES:
        model, report = quantize(fp32, config_for(scheme), table)
        path = workdir / f"model.{scheme}.onnx"
        with atomic_output(path) as tmp:
            onnx.save(model, str(tmp))
        logger.info(report.lines()[0])
        logits = _logits(model, sentences)
        rows.append(
            DemoRow(
                scheme,
                path.stat().st_size / 1e6,
                median_latency_ms(model, feeds, runs=runs),
                sqnr_db(reference, logits),
                argmax_agreement(reference, logits),
            )
        )
    return rows


def format_table(rows: list[DemoRow]) -> str:
    base = rows[0].latency_ms
    lines = [
        "| model | size MB | latency ms (b=1, T=128) | speed-up | logit SQNR dB | agreement |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sqnr = "—" if r.sqnr_db == float("inf") else f"{r.sqnr_db:.1f}"
        lines.append(
            f"| {r.name} | {r.size_mb:.1f} | {r.latency_ms:.2f} | {base / r.latency_ms:.2f}× | {sqnr} | {100 * r.agreement:.1f}% |"
        )
    return "\n".join(lines)

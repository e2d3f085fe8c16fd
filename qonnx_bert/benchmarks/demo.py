"""``qonnx demo``: the product's story on the packaged all-MiniLM-L6-v2, with no data directory.

all-MiniLM-L6-v2 is a sentence-embedding model, so it is judged as one: export with
mean pooling (feature extraction) -> calibrate on the shipped sentences -> W8A8, MP,
PEG (portable) and PEG for the CPU provider -> for each, size, latency (b=1, T=128),
zero-shot similarity on the shipped STS-B sample (cosine Spearman x100, MTEB's STS
score), SQNR of the sentence embeddings against FP32, and whether the strict HTP
check passes (when onnxruntime-qnn is installed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.analysis.evaluate import first_output, shipped_sts_dir, similarity_metrics
from qonnx_bert.benchmarks.latency import full_length_feeds, side_by_side_latency_ms
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.core.files import atomic_output
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.glue import GlueSplit, load_task
from qonnx_bert.inputs.glue.tasks import limit_split
from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences
from qonnx_bert.inputs.static import static_twin
from qonnx_bert.quantize import MixedPrecisionConfig, PegConfig, SchemeConfig, Target, W8A8Config, quantize

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoScheme:
    label: str
    file: str  # model.<file>.onnx in the work folder
    config: SchemeConfig

    @property
    def cpu_only(self) -> bool:
        """``peg --target cpu``: the LayerNorms around the groups stay float, for the CPU provider only."""
        return getattr(self.config, "target", Target.PORTABLE) == Target.CPU


DEMO_SCHEMES = (
    DemoScheme("W8A8", "w8a8", W8A8Config()),
    DemoScheme("MP", "mp", MixedPrecisionConfig()),
    DemoScheme("PEG", "peg", PegConfig()),
    DemoScheme("PEG --target cpu", "peg-cpu", PegConfig(target=Target.CPU)),
)


@dataclass(frozen=True)
class DemoRow:
    name: str
    size_mb: float
    latency_ms: float
    similarity: float  # cosine Spearman x100 on the STS-B sample
    sqnr_db: float  # sentence embeddings vs FP32 (inf for FP32 itself)
    htp: str  # "pass", "fail (...)", "n/a (...)" or "not checked"


@dataclass(frozen=True)
class DemoResult:
    rows: list[DemoRow]
    pairs: int
    workdir: Path


def _embeddings(model: onnx.ModelProto, split: GlueSplit) -> np.ndarray:
    """The sentence embeddings of both sides of every pair, sentence1 rows first."""
    session, encoder = cpu_session(model), Encoder.from_model(model)
    texts = split.texts_a + split.texts_b
    return first_output(session, encoder, texts, None, batch_size=32, progress=False)


def _similarity(embeddings: np.ndarray, split: GlueSplit) -> float:
    a, b = embeddings[: len(split)], embeddings[len(split) :]
    cosines = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return similarity_metrics(cosines, split.labels)["score"]


class HtpChecker:
    """The strict ``qonnx check --ep qnn-htp`` on each scheme's static-shape (1x128) twin: HTP needs
    fixed shapes, so the twin of ``run_demo``'s FP32 export (``workdir/model.onnx``, folded to 1x128 by
    ``inputs.static``) is calibrated and quantized the same way, once per scheme."""

    def __init__(self, workdir: Path, labels: tuple[str, ...], soc: str = "sm8650"):
        self.workdir, self.labels, self.soc = workdir, labels, soc
        self._static: tuple[onnx.ModelProto, object] | None = None

    def _fp32(self):
        if self._static is None:
            fp32 = static_twin(onnx.load(str(self.workdir / "model.onnx")), (1, 128))
            with atomic_output(self.workdir / "model.1x128.onnx") as tmp:
                onnx.save(fp32, str(tmp))
            sentences = shipped_sentences()
            ranges = calibrate(fp32, sample_sequences(sentences, None, len(sentences), 0, "shipped"), progress=False)
            self._static = fp32, ranges
        return self._static

    def __call__(self, model: onnx.ModelProto, spec: DemoScheme) -> str:
        from qonnx_bert.targets.htp_check import check_htp
        from qonnx_bert.targets.qnn import resolve_soc

        if spec.cpu_only:
            return "n/a (CPU only)"
        if spec.label not in self.labels:
            return "not checked"
        fp32, ranges = self._fp32()
        report = check_htp(quantize(fp32, spec.config, ranges)[0], resolve_soc(self.soc))
        return "pass" if report.ok else f"FAIL ({len(report.findings)} problems)"


def run_demo(
    workdir: Path,
    source: str = "minilm-l6",
    *,
    runs: int = 20,
    pairs: int | None = None,
    htp_check: Callable[[onnx.ModelProto, DemoScheme], str] | None = None,
) -> DemoResult:
    """Build every artifact in ``workdir`` and return one table row per model.

    ``htp_check`` (model, scheme) -> verdict fills the HTP column; None leaves it "not checked".
    """
    workdir.mkdir(parents=True, exist_ok=True)
    fp32_path = workdir / "model.onnx"
    export_model(source, fp32_path, task="feature-extraction")
    fp32 = onnx.load(str(fp32_path))
    sentences = shipped_sentences()
    table = calibrate(fp32, sample_sequences(sentences, None, len(sentences), 0, "shipped"), progress=False)
    table.save(workdir / "ranges.json")
    split = limit_split(load_task("stsb", "dev", shipped_sts_dir()), pairs)
    models, paths = {"FP32": fp32}, {"FP32": fp32_path}
    for spec in DEMO_SCHEMES:
        model, report = quantize(fp32, spec.config, table)
        paths[spec.label] = workdir / f"model.{spec.file}.onnx"
        with atomic_output(paths[spec.label]) as tmp:
            onnx.save(model, str(tmp))
        models[spec.label] = model
        logger.debug(report.lines()[0])
    reference = _embeddings(fp32, split)
    latency = side_by_side_latency_ms(models, full_length_feeds(Encoder.from_model(fp32), sentences[0]), runs=runs)
    rows = []
    for label, model in models.items():
        embeddings = reference if label == "FP32" else _embeddings(model, split)
        spec = next((s for s in DEMO_SCHEMES if s.label == label), None)
        htp = "n/a (float)" if spec is None else htp_check(model, spec) if htp_check else "not checked"
        size = paths[label].stat().st_size / 1e6
        rows.append(
            DemoRow(label, size, latency[label], _similarity(embeddings, split), sqnr_db(reference, embeddings), htp)
        )
    return DemoResult(rows, len(split), workdir)


def format_table(result: DemoResult) -> str:
    base = result.rows[0].latency_ms
    lines = [
        f"| model | size MB | latency ms (b=1, T=128) | speed-up | STS-B Spearman ({result.pairs} pairs) "
        "| embedding SQNR dB | HTP check |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.rows:
        sqnr = "—" if r.sqnr_db == float("inf") else f"{r.sqnr_db:.1f}"
        lines.append(
            f"| {r.name} | {r.size_mb:.1f} | {r.latency_ms:.1f} | {base / r.latency_ms:.2f}× | {r.similarity:.1f} "
            f"| {sqnr} | {r.htp} |"
        )
    return "\n".join(lines)


def conclusion(result: DemoResult) -> str:
    """One sentence that reads the table (computed from it, so it stays true when numbers move)."""
    rows = {r.name: r for r in result.rows}
    fp32, w8a8 = rows["FP32"], rows["W8A8"]
    best = max((r for r in result.rows if r.name != "FP32"), key=lambda r: r.sqnr_db)
    fastest = min((r for r in result.rows if r.name != "FP32"), key=lambda r: r.latency_ms)
    on_htp = [r.name for r in result.rows if r.htp == "pass"]
    return (
        f"W8A8 keeps only {w8a8.sqnr_db:.1f} dB of embedding SQNR (the paper's outlier problem); "
        f"{best.name} restores {best.sqnr_db:.1f} dB at STS-B {best.similarity:.1f} vs FP32's {fp32.similarity:.1f}; "
        f"the fastest, {fastest.name}, runs at {fp32.latency_ms / fastest.latency_ms:.2f}× FP32's speed on this CPU"
        + (f", and {' and '.join(on_htp)} run{'s' * (len(on_htp) == 1)} whole on the HTP." if on_htp else ".")
    )

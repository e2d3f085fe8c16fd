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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.analysis.evaluate import first_output, shipped_sts_dir, similarity_metrics
from qonnx_bert.benchmarks.latency import full_length_feeds, side_by_side_latency_ms
from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.core.files import atomic_output
from qonnx_bert.core.metrics import sqnr_db
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.core.workers import WorkerPool
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
    # One thread, not spinning: three processes embed at once on the two cores (see run_demo).
    session, encoder = cpu_session(model, 1, spinning=False), Encoder.from_model(model)
    texts = split.texts_a + split.texts_b
    return first_output(session, encoder, texts, None, batch_size=32, progress=False)


def _similarity(embeddings: np.ndarray, split: GlueSplit) -> float:
    a, b = embeddings[: len(split)], embeddings[len(split) :]
    cosines = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return similarity_metrics(cosines, split.labels)["score"]


# The check is structural (which ops and encodings reach the HTP), so a handful of sentences calibrate the
# twin as well as all of them do; each one costs a full 128-token run in calibration and in PEG's replay.
HTP_TWIN_SENTENCES = 16
WORKERS = 2  # the machines this project runs on (and its CI) have two cores


def htp_verdicts(fp32_path: Path, labels: tuple[str, ...], soc: str) -> dict[str, str]:
    """The strict ``qonnx check --ep qnn-htp`` verdict of each scheme in ``labels`` on the static-shape (1x128)
    twin of ``fp32_path`` (HTP needs fixed shapes; the twin is written beside it as ``model.1x128.onnx``)."""
    from qonnx_bert.targets.htp_check import check_htp
    from qonnx_bert.targets.qnn import resolve_soc

    fp32 = static_twin(onnx.load(str(fp32_path)), (1, 128))
    with atomic_output(fp32_path.with_name("model.1x128.onnx")) as tmp:
        onnx.save(fp32, str(tmp))
    sequences = sample_sequences(shipped_sentences(), None, HTP_TWIN_SENTENCES, 0, "shipped")
    ranges = calibrate(fp32, sequences, progress=False)
    verdicts = {}
    for spec in DEMO_SCHEMES:
        if spec.label in labels and not spec.cpu_only:
            report = check_htp(quantize(fp32, spec.config, ranges)[0], resolve_soc(soc))
            verdicts[spec.label] = "pass" if report.ok else f"FAIL ({len(report.findings)} problems)"
    return verdicts


def sts_pairs(pairs: int | None) -> GlueSplit:
    """The first ``pairs`` of the shipped STS-B dev sample (all 300 when None)."""
    return limit_split(load_task("stsb", "dev", shipped_sts_dir()), pairs)


def quantize_and_embed(fp32_path: Path, ranges_path: Path, spec: DemoScheme, out: Path, pairs: int | None):
    """One scheme's model, written to ``out``: the first line of its report and its embeddings of the pairs."""
    model, report = quantize(onnx.load(str(fp32_path)), spec.config, RangeTable.load(ranges_path))
    with atomic_output(out) as tmp:
        onnx.save(model, str(tmp))
    return report.lines()[0], _embeddings(model, sts_pairs(pairs))


def _htp_column(spec: DemoScheme | None, verdicts: dict[str, str]) -> str:
    if spec is None:
        return "n/a (float)"
    return "n/a (CPU only)" if spec.cpu_only else verdicts.get(spec.label, "not checked")


def run_demo(
    workdir: Path,
    source: str = "minilm-l6",
    *,
    runs: int = 20,
    pairs: int | None = None,
    htp_labels: tuple[str, ...] = (),
    soc: str = "sm8650",
) -> DemoResult:
    """Build every artifact in ``workdir`` and return one table row per model.

    Quantizing is mostly single-threaded Python (ORT's quantizer, the rewriter), so the four schemes (each
    job also embeds the STS-B pairs with its model) and the HTP check of the schemes in ``htp_labels`` (needs
    onnxruntime-qnn) run as jobs on two worker processes, started before the export so that their imports
    overlap it; this process embeds the pairs with FP32 meanwhile. Every job has ended before anything is timed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    fp32_path, ranges_path = workdir / "model.onnx", workdir / "ranges.json"
    paths = {"FP32": fp32_path} | {s.label: workdir / f"model.{s.file}.onnx" for s in DEMO_SCHEMES}
    # Spawned, not forked: the export runs torch. Workers get the caller's quiet or verbose setting.
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    with WorkerPool(WORKERS, start="spawn", verbose=verbose, preload=__name__) as pool:
        export_model(source, fp32_path, task="feature-extraction")
        fp32 = onnx.load(str(fp32_path))
        sentences = shipped_sentences()
        calibrate(fp32, sample_sequences(sentences, None, len(sentences), 0, "shipped"), progress=False).save(
            ranges_path
        )
        # The slowest first (PEG for the CPU, then the HTP check), so that the two workers end together.
        slowest_first = list(reversed(DEMO_SCHEMES))
        args = [(fp32_path, ranges_path, s, paths[s.label], pairs) for s in slowest_first]
        jobs = {slowest_first[0].label: pool.submit(quantize_and_embed, *args[0])}
        checked = pool.submit(htp_verdicts, fp32_path, htp_labels, soc) if htp_labels else None
        jobs |= {s.label: pool.submit(quantize_and_embed, *a) for s, a in zip(slowest_first[1:], args[1:])}
        split = sts_pairs(pairs)
        embeddings = {"FP32": _embeddings(fp32, split)}  # while the workers quantize
        for label, job in jobs.items():
            first_line, embeddings[label] = pool.result(job)
            logger.debug(first_line)
        verdicts = pool.result(checked) if checked else {}
    models = {label: fp32 if label == "FP32" else onnx.load(str(path)) for label, path in paths.items()}
    latency = side_by_side_latency_ms(models, full_length_feeds(Encoder.from_model(fp32), sentences[0]), runs=runs)
    reference, rows = embeddings["FP32"], []
    for label in models:
        spec = next((s for s in DEMO_SCHEMES if s.label == label), None)
        size = paths[label].stat().st_size / 1e6
        similarity, sqnr = _similarity(embeddings[label], split), sqnr_db(reference, embeddings[label])
        rows.append(DemoRow(label, size, latency[label], similarity, sqnr, _htp_column(spec, verdicts)))
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

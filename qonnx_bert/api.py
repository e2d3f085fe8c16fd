"""The Python API: the command line's steps as functions on file paths or loaded models.

``import qonnx_bert as qb`` exposes these (and the scheme configs) lazily, so importing the
package costs nothing until a function is used. Each function takes a path or an
``onnx.ModelProto`` and writes its output, if asked for, whole or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from qonnx_bert.analysis.evaluate import EvalResult, shipped_sts_dir
from qonnx_bert.calibration.ranges import RangeTable
from qonnx_bert.core.modelinfo import load_onnx
from qonnx_bert.quantize import QuantReport, SchemeConfig
from qonnx_bert.targets import CheckReport

if TYPE_CHECKING:
    from qonnx_bert.training.qat import QatConfig  # torch: imported when QAT runs

ModelLike = str | Path | onnx.ModelProto


def _model(model: ModelLike) -> tuple[onnx.ModelProto, str]:
    return (model, "model") if isinstance(model, onnx.ModelProto) else (load_onnx(model), str(model))


def export(
    source: str,
    output: str | Path,
    *,
    task: str = "text-classification",
    static_shape: tuple[int, int] | None = None,
    max_length: int = 128,
) -> Path:
    """Export ``source`` (``minilm-l6``, a recipe name or a Hugging Face directory) to ``output``.

    ``task="feature-extraction"`` writes the mean-pooled, L2-normalised sentence embedding and
    the last hidden state; the default writes a classifier's logits. Checked against PyTorch.
    """
    from qonnx_bert.inputs.export import export_model

    return export_model(source, output, static_shape=static_shape, max_length=max_length, task=task).path


def calibrate(
    model: ModelLike,
    texts: Sequence[str] | None = None,
    *,
    num_sequences: int = 64,
    seed: int = 0,
    estimator: str | None = None,
    recipe: str | Path | None = None,
    output: str | Path | None = None,
) -> RangeTable:
    """Activation ranges of ``model`` over ``num_sequences`` seeded sentences of ``texts`` (default: the
    shipped sentences), padding excluded; ``recipe`` may name a shipped recipe (``"paper-ptq"``)."""
    from qonnx_bert.calibration.calibrate import calibrate as run
    from qonnx_bert.inputs.sequences import sample_sequences, shipped_sentences

    proto, _ = _model(model)
    source = "shipped" if texts is None else "python"
    sequences = sample_sequences(list(texts or shipped_sentences()), None, num_sequences, seed, source)
    table = run(proto, sequences, estimator=estimator, recipe=recipe, progress=False)
    if output is not None:
        table.save(output)
    return table


def quantize(
    model: ModelLike, config: SchemeConfig, ranges: RangeTable, *, output: str | Path | None = None
) -> tuple[onnx.ModelProto, QuantReport]:
    """The QDQ model of ``config``'s scheme (``W8A8Config()``, ``PegConfig(groups=6)``, ...) and its report."""
    from qonnx_bert.core.files import atomic_output
    from qonnx_bert.quantize import quantize as run

    proto, path = _model(model)
    quantized, report = run(proto, config, ranges, path=path)
    if output is not None:
        with atomic_output(output, inputs=() if isinstance(model, onnx.ModelProto) else (model,)) as tmp:
            onnx.save(quantized, str(tmp))
    return quantized, report


def qat(
    checkpoint: str,
    config: QatConfig,
    ranges: str | Path,
    output: str | Path,
    *,
    data_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """Quantization-aware training of ``checkpoint`` (a fine-tuned classifier: recipe name or Hugging Face
    directory) on ``config.task``'s training split, from the PTQ ``ranges`` of its export: ``QatConfig(task,
    scheme="w8a8" | "mp" | "peg" | "w8a32", lowbit=..., epochs=...)``. Writes ``output/`` as ``qonnx qat`` does
    (``checkpoint/``, ``ranges.json``, ``model.qdq.onnx``, ...; a rerun resumes) and returns its record (the dev
    score of each epoch). ``data_dir``: a GLUE folder (default ``$QONNX_GLUE_DIR``); ``device``: ``cpu``,
    ``cuda``, ``cuda:N`` or ``auto``."""
    from qonnx_bert.training.qat import run_qat

    return run_qat(checkpoint, data_dir, ranges, output, config, progress=progress, device=device)


def evaluate(
    model: ModelLike, task: str, data_dir: str | Path | None = None, *, limit: int | None = None
) -> EvalResult:
    """The model's dev-set metric on a GLUE task in ONNX Runtime (an embedding model: zero-shot STS-B).

    ``data_dir``: a GLUE folder (default ``$QONNX_GLUE_DIR``); ``sts_sample_dir()`` is the shipped
    300-pair STS-B sample.
    """
    from qonnx_bert.analysis.evaluate import evaluate as run
    from qonnx_bert.inputs.glue import load_task
    from qonnx_bert.inputs.glue.tasks import limit_split

    proto, _ = _model(model)
    return run(proto, limit_split(load_task(task, "dev", data_dir), limit), progress=False)


def check(model: ModelLike, ep: str = "qnn-htp", soc: str = "sm8650") -> CheckReport:
    """Will the QDQ model run fully quantized on ``ep`` (``qnn-htp``: HTP, emulated on x86; ``cpu``)?"""
    from qonnx_bert.targets import require_ep

    proto, path = _model(model)
    if require_ep(ep) == "cpu":
        from qonnx_bert.targets.cpu import check_cpu

        return check_cpu(proto, path=path)
    from qonnx_bert.targets.htp_check import check_htp
    from qonnx_bert.targets.qnn import resolve_soc

    return check_htp(proto, resolve_soc(soc), path=path)


def sts_sample_dir() -> Path:
    """The shipped STS-B sample as a GLUE folder (300 dev pairs, CC BY-SA 4.0) for ``evaluate(..., "stsb", ...)``."""
    return shipped_sts_dir()

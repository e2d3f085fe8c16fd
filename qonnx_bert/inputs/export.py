"""Export a Hugging Face sequence classifier to ONNX and check it against PyTorch.

``torch.onnx.export(dynamo=True)`` at opset 21 (int16 QuantizeLinear is native
there), eager attention, inputs ``input_ids``/``attention_mask``/``token_type_ids``,
dynamic batch and sequence axes unless a static shape is asked for (edge runtimes
need one). The tokenizer and a small info record are embedded as metadata.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import check_size, save_model
from qonnx_bert.core.modelinfo import INPUT_NAMES, ModelInfo, embed
from qonnx_bert.core.runtime import cpu_session

logger = logging.getLogger(__name__)

OPSET = 21
MAX_LOGIT_DIFF = 1e-4
CHECK_SENTENCES = (
    ("The cat sat on the mat.", "A cat is sitting."),
    ("Quantization keeps the model small; outliers make it hard.", "It is easy."),
)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_diff: float
    num_nodes: int


def _torch_feeds(tokenizer, static_shape: tuple[int, int] | None) -> dict:
    a, b = zip(*CHECK_SENTENCES, strict=True)
    if static_shape is None:
        return dict(tokenizer(list(a), list(b), padding=True, return_tensors="pt"))
    rows, width = static_shape
    a, b = (list(a) * rows)[:rows], (list(b) * rows)[:rows]
    return dict(tokenizer(a, b, padding="max_length", max_length=width, truncation=True, return_tensors="pt"))


def _model_feeds(model, feeds: dict) -> dict:
    """The feeds ``model`` takes: DistilBERT has no ``token_type_ids``; RoBERTa and XLM-R have one type only
    (a pair's type 1 is out of range), so their graph gets none and uses type 0 inside."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    names = [n for n in INPUT_NAMES if n in feeds and n in accepted]
    if getattr(model.config, "type_vocab_size", 2) < 2 and "token_type_ids" in names:
        names.remove("token_type_ids")
    return {n: feeds[n] for n in names}


def export_program(model, feeds: dict, static_shape, output_names: tuple[str, ...] = ("logits",)):
    """torch.onnx's dynamo export of ``model`` on ``feeds`` (dynamic batch and length unless ``static_shape``)."""
    import torch

    names = list(feeds)
    dynamic = None
    if static_shape is None:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        dynamic = {n: {0: batch, 1: seq} for n in names}
    try:
        program = torch.onnx.export(
            model,
            (),
            kwargs={n: feeds[n] for n in names},
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes=dynamic,
            input_names=names,
            output_names=list(output_names),
            verbose=False,
        )
    except Exception as err:  # torch raises many types, each with pages of trace: one line for the user
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"torch.onnx.export failed on this {model.config.model_type} model ({type(err).__name__}: {first}); "
            "report it with the model's config.json"
        ) from None
    program.optimize()
    return program.model_proto


def _max_logit_diff(model, proto: onnx.ModelProto, feeds: dict) -> float:
    import torch

    with torch.no_grad():
        expected = model(**feeds).logits.numpy()
    session = cpu_session(proto)
    names = {i.name for i in session.get_inputs()}
    got = session.run(["logits"], {k: v.numpy() for k, v in feeds.items() if k in names})[0]
    return float(np.max(np.abs(got - expected)))


def export_model(
    source: str,
    output: str | Path,
    *,
    static_shape: tuple[int, int] | None = None,
    max_length: int = 128,
    external_data: bool = False,
    task: str = "text-classification",
) -> ExportResult:
    """Export ``source`` (a models/ name, ``minilm-l6`` or a local HF directory) to ``output``.

    ``task="feature-extraction"``: the encoder with sentence-transformers pooling (``embedding.py``).

    Raises ``UsageError`` if ONNX Runtime's logits differ from PyTorch's by more
    than 1e-4 (nothing is written then).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if task == "feature-extraction":
        from qonnx_bert.inputs.embedding import export_embedding_model  # builds on this module's export

        return export_embedding_model(source, output, static_shape, max_length, external_data)
    if task != "text-classification":
        raise UsageError(f"unknown export task {task!r}; choose text-classification or feature-extraction")
    from qonnx_bert.inputs.models import load_for_export, resolve_model

    resolved = resolve_model(source)
    model, tokenizer = load_for_export(resolved)
    check_length(static_shape[1] if static_shape else max_length, model.config)
    if not external_data:  # refused before the minutes an export of such a model takes
        check_size(sum(p.numel() * p.element_size() for p in model.parameters()), Path(output))
    feeds = _model_feeds(model, _torch_feeds(tokenizer, static_shape))
    proto = export_program(model, feeds, static_shape)
    diff = _max_logit_diff(model, proto, feeds)
    logger.info("max |logit(ORT) - logit(PyTorch)| = %.3g", diff)
    info = ModelInfo(
        source=str(resolved.name),
        num_labels=int(model.config.num_labels),
        pad_token_id=int(tokenizer.pad_token_id or 0),
        max_length=static_shape[1] if static_shape else max_length,
        static_shape=static_shape,
        task=resolved.task,
    )
    return save_checked(proto, diff, info, tokenizer, output, external_data=external_data)


def save_checked(
    proto: onnx.ModelProto, diff: float, info: ModelInfo, tokenizer, output: str | Path, *, external_data: bool = False
) -> ExportResult:
    """Refuse an export more than 1e-4 off PyTorch; else embed its record and tokenizer and write it whole."""
    if not diff <= MAX_LOGIT_DIFF:
        raise UsageError(f"exported model differs from PyTorch by {diff:.3g} > {MAX_LOGIT_DIFF}; report this model")
    embed(proto, info, tokenizer.backend_tokenizer.to_str())
    nodes = len(proto.graph.node)
    save_model(proto, output, external_data=external_data)
    return ExportResult(Path(output), diff, nodes)


def check_length(length: int, config) -> None:
    """A sequence length the model's position table covers (longer ones crash inside ONNX Runtime later)."""
    limit = getattr(config, "max_position_embeddings", None)
    if length < 1 or (limit is not None and length > limit):
        raise UsageError(f"sequence length {length} is out of range: this model takes 1 to {limit} tokens")


def parse_static_shape(text: str | None) -> tuple[int, int] | None:
    """``"1,128"`` -> ``(1, 128)``; a clear error for anything else."""
    if text is None:
        return None
    try:
        rows, width = (int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"`static_shape={text}` is not B,T (two integers, e.g. 1,128)") from None
    if rows < 1 or width < 8 or width > 512:
        raise UsageError(f"`static_shape={text}` out of range: B >= 1 and 8 <= T <= 512")
    return rows, width

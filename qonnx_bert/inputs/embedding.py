"""Export a sentence-embedding encoder (``--task feature-extraction``) and check it against PyTorch.

The graph computes what sentence-transformers defines for mean-pooling models such
as all-MiniLM-L6-v2: the last hidden state, its mean over the non-padding tokens
(attention-mask weighted, the count clamped at 1e-9) and that mean L2-normalised
(``F.normalize``, eps 1e-12; one ``LpNormalization`` in the graph). Every pooling op
is one that the quantizer and HTP take, so a quantized embedding model runs whole on
HTP (``qonnx check --ep qnn-htp``). The pooling is written into the graph rather than
left to the caller, so a quantized file gives the embedding users compare with
cosine similarity, and the ``output`` role that schemes and metrics judge is it:
``sentence_embedding`` is the first output, ``last_hidden_state`` the second.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.core.files import check_size
from qonnx_bert.core.modelinfo import EMBEDDING, INPUT_NAMES, ModelInfo
from qonnx_bert.core.runtime import cpu_session
from qonnx_bert.inputs.export import CHECK_SENTENCES, ExportResult, check_length, export_program, save_checked

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("sentence_embedding", "last_hidden_state")


def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling + L2 normalisation in NumPy ([B, T, H], [B, T] -> [B, H])."""
    weights = mask[..., None].astype(hidden.dtype)
    pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _embedder(encoder):
    """``encoder`` (a Hugging Face ``AutoModel``) wrapped to return (sentence_embedding, last_hidden_state)."""
    import torch

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            # A Where on the mask rather than a Cast of it: HTP runs a Cast of the integer mask in float.
            one, zero = torch.ones((), dtype=hidden.dtype), torch.zeros((), dtype=hidden.dtype)
            weights = torch.where(attention_mask.unsqueeze(-1) > 0, one, zero)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1), hidden

    return SentenceEmbedder().eval()


def _fuse_l2_normalization(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``F.normalize`` (ReduceL2 -> Clip -> Expand -> Div) as one ``LpNormalization``, by ONNX Runtime's
    own QNN fusion: HTP runs it as its L2Norm op, quantized, where the four ops ran in float."""
    from onnxruntime.quantization.execution_providers.qnn.fusion_lpnorm import FusionLpNormalization
    from onnxruntime.quantization.onnx_model import ONNXModel

    wrapped = ONNXModel(proto)
    FusionLpNormalization(wrapped).apply()
    return wrapped.model


def _feeds(tokenizer, static_shape: tuple[int, int] | None) -> dict:
    texts = [s for pair in CHECK_SENTENCES for s in pair]
    if static_shape is None:
        return dict(tokenizer(texts, padding=True, return_tensors="pt"))
    rows, width = static_shape
    texts = (texts * rows)[:rows]
    return dict(tokenizer(texts, padding="max_length", max_length=width, truncation=True, return_tensors="pt"))


def _max_output_diff(model, proto: onnx.ModelProto, feeds: dict) -> float:
    import torch

    with torch.no_grad():
        expected = [t.numpy() for t in model(**feeds)]
    session = cpu_session(proto)
    names = {i.name for i in session.get_inputs()}
    got = session.run(list(OUTPUT_NAMES), {k: v.numpy() for k, v in feeds.items() if k in names})
    return max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))


def embed_torch(source, texts: list[str], *, batch_size: int = 32, max_length: int = 128) -> np.ndarray:
    """Sentence embeddings of ``texts`` in PyTorch (the pooling the export writes): the reference for ONNX scores."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = _embedder(AutoModel.from_pretrained(source.path, attn_implementation="sdpa"))
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            out.append(model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))[0].numpy())
    return np.concatenate(out)


def export_embedding_model(
    source: str, output: str | Path, static_shape: tuple[int, int] | None, max_length: int, external_data: bool
) -> ExportResult:
    """Export ``source``'s encoder with mean pooling to ``output``; refused (nothing written) past 1e-4 of PyTorch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    from qonnx_bert.inputs.models import resolve_model

    resolved = resolve_model(source)
    encoder = AutoModel.from_pretrained(resolved.path, attn_implementation="eager")
    check_length(static_shape[1] if static_shape else max_length, encoder.config)
    if not external_data:  # refused before the export, as for classifiers
        check_size(sum(p.numel() * p.element_size() for p in encoder.parameters()), Path(output))
    model, tokenizer = _embedder(encoder.eval()), AutoTokenizer.from_pretrained(resolved.path)
    feeds = {k: v for k, v in _feeds(tokenizer, static_shape).items() if k in INPUT_NAMES}
    proto = _fuse_l2_normalization(export_program(model, feeds, static_shape, OUTPUT_NAMES))
    diff = _max_output_diff(model, proto, feeds)
    logger.debug("max |output(ORT) - output(PyTorch)| = %.3g", diff)
    length = static_shape[1] if static_shape else max_length
    info = ModelInfo(str(resolved.name), 0, int(tokenizer.pad_token_id or 0), length, static_shape, head=EMBEDDING)
    return save_checked(proto, diff, info, tokenizer, output, external_data=external_data)

"""What a qonnx ONNX file carries about itself: tokenizer, labels, shapes.

``qonnx export`` embeds the tokenizer (its ``tokenizer.json``) and a small JSON
record in the model's ``metadata_props``, so ``calibrate``, ``quantize`` and
``eval`` need no extra flags and a model file is never separated from the
tokenizer it was exported with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from qonnx_bert.core.errors import UsageError

INFO_KEY = "qonnx.info"
TOKENIZER_KEY = "qonnx.tokenizer"
TARGET_KEY = "qonnx.target"  # metadata: the runtime a lowering was made for ("cpu"); absent = portable
PERMUTED_KEY = "qonnx.permuted"  # tensors a rewrite left permuted along their last axis (PEG)
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
CLASSIFIER, EMBEDDING = "text-classification", "feature-extraction"  # ModelInfo.head, as Hugging Face names pipelines


@dataclass(frozen=True)
class ModelInfo:
    """The record embedded by export: where the model came from and how to feed it."""

    source: str
    num_labels: int
    pad_token_id: int
    max_length: int
    static_shape: tuple[int, int] | None = None
    task: str | None = None
    head: str = CLASSIFIER  # EMBEDDING: outputs (sentence_embedding, last_hidden_state), num_labels 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        data = json.loads(text)
        if data.get("static_shape") is not None:
            data["static_shape"] = tuple(data["static_shape"])
        return cls(**data)


def load_onnx(path: str | Path, *, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or unreadable file into a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file {path} not found; pass the .onnx written by `qonnx export`")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as err:  # onnx raises DecodeError, OSError, ... for a bad file
        raise UsageError(f"{path} is not a readable ONNX model ({type(err).__name__}); re-run `qonnx export`") from None


def embed(model: onnx.ModelProto, info: ModelInfo, tokenizer_json: str) -> None:
    """Store the info record and the tokenizer in the model's metadata."""
    props = {p.key: p.value for p in model.metadata_props}
    props[INFO_KEY] = info.to_json()
    props[TOKENIZER_KEY] = tokenizer_json
    onnx.helper.set_model_props(model, props)


def read_info(model: onnx.ModelProto, path: str | Path = "model") -> ModelInfo:
    """The embedded record; a clear error for an ONNX file not written by ``qonnx export``."""
    props = {p.key: p.value for p in model.metadata_props}
    if INFO_KEY not in props or TOKENIZER_KEY not in props:
        raise UsageError(
            f"{path} carries no tokenizer: pass `tokenizer` (the model's Hugging Face tokenizer directory) "
            "or export it with `qonnx export`"
        )
    return ModelInfo.from_json(props[INFO_KEY])


def read_tokenizer_json(model: onnx.ModelProto, path: str | Path = "model") -> str:
    read_info(model, path)
    return next(p.value for p in model.metadata_props if p.key == TOKENIZER_KEY)


def permuted_record(tensors: dict[str, np.ndarray]) -> str:
    """``{tensor: perm}`` as JSON (the tensor holds its FP32 value's ``[..., perm]``), each distinct order once."""
    orders: dict[tuple[int, ...], int] = {}
    names = {name: orders.setdefault(tuple(int(i) for i in perm), len(orders)) for name, perm in tensors.items()}
    return json.dumps({"orders": [list(o) for o in orders], "tensors": names})


def read_permuted(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The tensors of a rewritten model whose last axis is permuted against the FP32 model's (empty: none)."""
    text = next((p.value for p in model.metadata_props if p.key == PERMUTED_KEY), None)
    if text is None:
        return {}
    data = json.loads(text)
    orders = [np.asarray(o, np.int64) for o in data["orders"]]
    return {name: orders[i] for name, i in data["tensors"].items()}


def static_shape(model: onnx.ModelProto) -> tuple[int, int] | None:
    """The fixed (batch, length) of the first input, None where either is dynamic."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in model.graph.input[0].type.tensor_type.shape.dim]
    return (dims[0], dims[1]) if len(dims) == 2 and None not in dims else None


def quantized_nodes(model: onnx.ModelProto) -> int:
    """Nodes that (de)quantize or compute in integers: QDQ, dynamic quantization, ORT's integer kernels."""
    return sum(
        n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
        or n.op_type.startswith(("QLinear", "QGemm", "QAttention", "MatMulInteger", "DynamicQuantizeMatMul"))
        for n in model.graph.node
    )


def check_encoder_inputs(model: onnx.ModelProto, path: str | Path = "model") -> None:
    """Refuse an empty graph, an already quantized one, and one without the BERT inputs (an image model, ...)."""
    if not model.graph.node:
        raise UsageError(f"{path} is an empty graph (no nodes); pass the FP32 model written by `qonnx export`")
    quantized = quantized_nodes(model)
    if quantized:
        raise UsageError(f"{path} is already quantized ({quantized} quantized nodes); pass the FP32 model it came from")
    names = {i.name for i in model.graph.input}
    missing = [n for n in INPUT_NAMES if n not in names and n != "token_type_ids"]
    if missing:
        raise UsageError(
            f"{path} is not a BERT-like encoder: inputs {sorted(names)} lack {missing}; export one with `qonnx export`"
        )

"""Read a user's encoder file as every command sees it: canonical form, tokenizer attached.

``qonnx export`` embeds the tokenizer; a file from another exporter has none, so
``--tokenizer DIR`` (a Hugging Face tokenizer directory) supplies it and the info
record is read off the graph (static input shape, label count from the output).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.memory import release_freed_memory
from qonnx_bert.core.modelinfo import ModelInfo, check_encoder_inputs, embed, load_onnx, static_shape
from qonnx_bert.graph.canonicalize import canonicalize

DEFAULT_MAX_LENGTH = 128  # as `qonnx export`: the truncation length of calibration and eval text
TOKENIZER_HELP = (
    "Hugging Face tokenizer directory for an .onnx that carries none (any exporter but `qonnx export`); "
    "it is stored in the files qonnx writes"
)


def _is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def _num_labels(model: onnx.ModelProto) -> int:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else 0


def attach_tokenizer(model: onnx.ModelProto, directory: str | Path, source: str) -> None:
    """Embed the tokenizer of ``directory`` and an info record read off the graph, in place."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        tokenizer_json = tokenizer.backend_tokenizer.to_str()
    except (OSError, ValueError, AttributeError) as err:
        raise UsageError(
            f"`tokenizer={directory}`: no fast Hugging Face tokenizer there ({type(err).__name__}); "
            "pass the directory holding the model's tokenizer.json / tokenizer_config.json"
        ) from None
    static = static_shape(model)
    info = ModelInfo(
        source=source,
        num_labels=_num_labels(model),
        pad_token_id=int(tokenizer.pad_token_id or 0),
        max_length=static[1] if static else DEFAULT_MAX_LENGTH,
        static_shape=static,
    )
    embed(model, info, tokenizer_json)


def load_model(path: str | Path, tokenizer: str | Path | None = None) -> onnx.ModelProto:
    """An FP32 encoder file in canonical form (a QDQ file as it is), with ``tokenizer`` embedded if given.

    Without either, commands that encode text stop in ``modelinfo.read_info``, naming ``--tokenizer``.
    """
    model = load_onnx(path)
    if not _is_quantized(model):
        check_encoder_inputs(model, path)
        model = canonicalize(model, str(path)).model
        release_freed_memory()  # canonicalize's IR graph is a reference cycle over a model-sized copy
    if tokenizer is not None:
        attach_tokenizer(model, tokenizer, Path(path).name)
    return model

"""Texts to ONNX Runtime feeds: the embedded tokenizer, padding and length buckets.

Uses the Rust ``tokenizers`` library directly (it ships with ``transformers``):
the tokenizer travels inside the ONNX file as ``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from tokenizers import Tokenizer

from qonnx_bert.core.modelinfo import ModelInfo, read_info, read_tokenizer_json


@dataclass
class Encoder:
    """Tokenizes sentence (pairs) into int64 feeds for the exported graph."""

    tokenizer: Tokenizer
    info: ModelInfo
    input_names: tuple[str, ...]

    @classmethod
    def from_model(
        cls, model: onnx.ModelProto, path: str = "model", static_shape: tuple[int, int] | None = None
    ) -> Encoder:
        """The model's tokenizer and record; ``static_shape`` pads to another model's fixed batch x length."""
        info = read_info(model, path)
        if static_shape is not None:
            info = replace(info, static_shape=static_shape)
        tok = Tokenizer.from_str(read_tokenizer_json(model, path))
        tok.no_padding()
        length = info.static_shape[1] if info.static_shape else info.max_length
        tok.enable_truncation(max_length=length)
        return cls(tok, info, tuple(i.name for i in model.graph.input))

    @property
    def static_batch(self) -> int | None:
        return self.info.static_shape[0] if self.info.static_shape else None

    def lengths(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None) -> np.ndarray:
        return np.array([len(e.ids) for e in self._encode(texts_a, texts_b)])

    def _encode(self, texts_a, texts_b):
        pairs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b, strict=True))
        return self.tokenizer.encode_batch(pairs)

    def feeds(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One batch, right-padded to its longest sequence (or to the static shape)."""
        encodings = self._encode(texts_a, texts_b)
        width = self.info.static_shape[1] if self.info.static_shape else max(len(e.ids) for e in encodings)
        rows = len(encodings) if self.static_batch is None else self.static_batch
        out = {
            "input_ids": np.full((rows, width), self.info.pad_token_id, np.int64),
            "attention_mask": np.zeros((rows, width), np.int64),
            "token_type_ids": np.zeros((rows, width), np.int64),
        }
        for i, enc in enumerate(encodings):
            n = len(enc.ids)
            out["input_ids"][i, :n] = enc.ids
            out["attention_mask"][i, :n] = 1
            out["token_type_ids"][i, :n] = enc.type_ids
        return {k: v for k, v in out.items() if k in self.input_names}


def length_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Indices grouped into batches of similar length (less padding, faster on CPU).

    Batches come in order of length; callers that need the original order scatter
    results back by these indices.
    """
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]

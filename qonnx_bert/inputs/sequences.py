"""Calibration sequences and where they come from: a GLUE training split, a text file, or the shipped sentences."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from qonnx_bert.core.errors import UsageError
from qonnx_bert.inputs.encode import Encoder

SHIPPED = "calibration_sentences.txt"


@dataclass(frozen=True)
class Sequences:
    """The calibration sentences (pairs) and where they came from."""

    texts_a: list[str]
    texts_b: list[str] | None
    source: str
    seed: int

    def __len__(self) -> int:
        return len(self.texts_a)

    def pairs(self) -> list[list[str | None]]:
        """The sequences as [text_a, text_b or None] rows: stored in the ranges file for replay."""
        b = self.texts_b or [None] * len(self.texts_a)
        return [[a, bb] for a, bb in zip(self.texts_a, b, strict=True)]

    @classmethod
    def from_pairs(cls, pairs: list, source: str, seed: int) -> Sequences:
        texts_b = [p[1] for p in pairs] if pairs and pairs[0][1] is not None else None
        return cls([p[0] for p in pairs], texts_b, source, seed)


def sample_sequences(
    texts_a: Sequence[str], texts_b: Sequence[str] | None, n: int, seed: int, source: str
) -> Sequences:
    """``n`` sequences drawn without replacement with a seeded generator."""
    pick = np.random.default_rng(seed).permutation(len(texts_a))[: min(n, len(texts_a))]
    return Sequences([texts_a[i] for i in pick], None if texts_b is None else [texts_b[i] for i in pick], source, seed)


def shipped_sentences() -> list[str]:
    """The few dozen general-English sentences shipped in the package (``qonnx demo``)."""
    text = resources.files("qonnx_bert").joinpath("data", SHIPPED).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def text_file_sentences(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"text file {path} not found; pass a UTF-8 file with one sequence per line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8, one sequence per line"
        ) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{path} holds no text lines; pass a file with one sequence per line")
    return lines


def glue_train_sequences(task: str, data_dir, n: int, seed: int) -> Sequences:
    from qonnx_bert.inputs.glue import load_task

    split = load_task(task, "train", data_dir)
    return sample_sequences(split.texts_a, split.texts_b, n, seed, f"glue:{split.task.name}:train")


def calibration_sequences(
    n: int, seed: int, *, task: str | None = None, data_dir=None, texts: str | Path | None = None
) -> Sequences:
    """``n`` seeded sequences from a GLUE task's training split, else a text file, else the shipped sentences."""
    if task:
        return glue_train_sequences(task, data_dir, n, seed)
    if texts:
        return sample_sequences(text_file_sentences(texts), None, n, seed, f"file:{texts}")
    return sample_sequences(shipped_sentences(), None, n, seed, "shipped")


def first_sequences(n: int, *, task: str | None = None, data_dir=None, texts: str | None = None) -> Sequences:
    """The first ``n`` dev examples of a GLUE task, lines of a text file, or shipped sentences."""
    if n < 1:
        raise UsageError(f"asked for {n} sequences; need at least 1")
    if task:
        from qonnx_bert.inputs.glue import load_task

        split = load_task(task, "dev", data_dir)
        b = None if split.texts_b is None else split.texts_b[:n]
        return Sequences(split.texts_a[:n], b, f"glue:{split.task.name}:dev", 0)
    lines = text_file_sentences(texts) if texts else shipped_sentences()
    return Sequences(lines[:n], None, f"file:{texts}" if texts else "shipped", 0)


def source_files(split: str, *, task: str | None = None, data_dir=None, texts: str | None = None) -> list[Path]:
    """The files a sequence source reads (a GLUE ``split`` file or the text file), for the path guard."""
    if task:
        from qonnx_bert.inputs.glue.tasks import split_file

        return [split_file(task, split, data_dir)]
    return [Path(texts)] if texts else []


def sequence_feeds(encoder: Encoder, sequences: Sequences) -> Iterator[dict[str, np.ndarray]]:
    """One feed per sequence (no padding except a static shape's)."""
    for i, a in enumerate(sequences.texts_a):
        yield encoder.feeds([a], None if sequences.texts_b is None else [sequences.texts_b[i]])

"""Where calibration sequences come from: a GLUE training split, a text file, or the shipped sentences."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qonnx_bert.calibration.calibrate import Sequences, sample_sequences
from qonnx_bert.errors import UsageError

SHIPPED = "calibration_sentences.txt"


def shipped_sentences() -> list[str]:
    """The few dozen general-English sentences shipped in the package (``qonnx demo``)."""
    text = resources.files("qonnx_bert").joinpath("data", SHIPPED).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def text_file_sentences(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"text file {path} not found; pass a UTF-8 file with one sequence per line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{path} holds no text lines; pass a file with one sequence per line")
    return lines


def glue_train_sequences(task: str, data_dir, n: int, seed: int) -> Sequences:
    from qonnx_bert.glue import load_task

    split = load_task(task, "train", data_dir)
    return sample_sequences(split.texts_a, split.texts_b, n, seed, f"glue:{split.task.name}:train")


def sequences_from_args(args) -> Sequences:
    if args.task:
        return glue_train_sequences(args.task, args.data_dir, args.num_sequences, args.seed)
    if args.texts:
        return sample_sequences(text_file_sentences(args.texts), None, args.num_sequences, args.seed, f"file:{args.texts}")
    return sample_sequences(shipped_sentences(), None, args.num_sequences, args.seed, "shipped")

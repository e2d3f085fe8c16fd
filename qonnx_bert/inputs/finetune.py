"""Fine-tune a model on a GLUE task on CPU: the checkpoints behind the ``models/`` recipes.

A plain PyTorch loop, reproducible from the recipe alone (everything seeded) and
fast enough on a laptop CPU: batches are padded only to their own longest
sequence and drawn from length-sorted buckets, so little compute goes to padding.
The checkpoint is written to a temporary directory and renamed at the end, so an
interrupted build never leaves a half checkpoint that would count as built.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import require
from qonnx_bert.inputs.glue.metrics import predictions_from_logits, score
from qonnx_bert.inputs.glue.tasks import GlueSplit, get_task, load_task
from qonnx_bert.inputs.models import RECIPE_FILE, load_model, resolve_model

RECIPE_DEFAULTS = {
    "epochs": 3,
    "lr": 1e-4,
    "batch_size": 32,
    "max_length": 128,
    "seed": 0,
    "max_train_examples": None,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
}
_RECIPE_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "base": str,
    "task": str,
    "description": str,
    "epochs": (int, float),
    "lr": (int, float),
    "batch_size": int,
    "max_length": int,
    "seed": int,
    "max_train_examples": int,
    "weight_decay": (int, float),
    "warmup_ratio": (int, float),
}
# JSON also reads NaN (no bound holds) and Infinity (refused apart); NumPy takes 32-bit seeds
_RECIPE_BOUNDS = {
    "epochs": ("> 0", lambda v: v > 0),
    "lr": ("> 0", lambda v: v > 0),
    "batch_size": (">= 1", lambda v: v >= 1),
    "max_length": (">= 1", lambda v: v >= 1),
    "seed": ("in [0, 2**32 - 1]", lambda v: 0 <= v < 2**32),
    "max_train_examples": (">= 1", lambda v: v >= 1),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "warmup_ratio": ("in [0, 1]", lambda v: 0 <= v <= 1),
}
BUCKET_BATCHES = 50  # a bucket holds this many batches' worth of examples, sorted by length


def complete_recipe(recipe: dict, where: str = "recipe") -> dict:
    """The recipe with defaults filled in; unknown or missing keys are a usage error, not a silent typo.

    ``where`` names the recipe (its file) in the errors, which name the key and what it must be.
    """
    unknown = set(recipe) - set(_RECIPE_TYPES)
    if unknown:
        raise UsageError(
            f"{where} has unknown keys {sorted(unknown)}; allowed: base, task, {', '.join(RECIPE_DEFAULTS)}"
        )
    for key in ("base", "task"):
        if not recipe.get(key):
            raise UsageError(f"{where} lacks {key!r}; a recipe needs at least base and task")
    head = {k: recipe[k] for k in ("name", "base", "task") if k in recipe}  # readable key order in the record
    full = {**head, **RECIPE_DEFAULTS, **recipe}
    for key, kind in _RECIPE_TYPES.items():
        if key in full and (key != "max_train_examples" or full[key] is not None):  # null: the whole split
            require(full, key, kind, where)
    for key, (bound, holds) in _RECIPE_BOUNDS.items():
        if full[key] is not None and (full[key] == math.inf or not holds(full[key])):
            raise UsageError(f"{where}: key {key!r} must be a finite number {bound}, got {full[key]}")
    try:
        full["task"] = get_task(full["task"]).name
    except UsageError as err:
        raise UsageError(f"{where}: key 'task': {err}") from None
    return full


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so a recipe gives the same checkpoint on the same machine."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subsample(split: GlueSplit, limit: int | None, seed: int) -> GlueSplit:
    """A seeded random subset of ``limit`` examples (in file order), since GLUE files may be sorted."""
    if limit is None or limit >= len(split):
        return split
    keep = np.sort(np.random.default_rng(seed).permutation(len(split))[:limit])
    b = None if split.texts_b is None else [split.texts_b[i] for i in keep]
    return GlueSplit(split.task, [split.texts_a[i] for i in keep], b, split.labels[keep])


def encode(tokenizer, split: GlueSplit, max_length: int) -> list[dict[str, list[int]]]:
    """Token ids (and type ids where the model uses them) per example, unpadded."""
    args = (split.texts_a,) if split.texts_b is None else (split.texts_a, split.texts_b)
    enc = tokenizer(*args, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc and k in tokenizer.model_input_names]
    return [{k: enc[k][i] for k in keys} for i in range(len(split))]


def bucket_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples: random order, little padding."""
    order = rng.permutation(len(lengths))
    pool = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(examples: list[dict[str, list[int]]], idx: np.ndarray, pad_id: int) -> dict:
    """Right-pad one batch to its longest example."""
    import torch

    width = max(len(examples[i]["input_ids"]) for i in idx)
    out = {k: torch.full((len(idx), width), pad_id if k == "input_ids" else 0, dtype=torch.long) for k in examples[0]}
    out["attention_mask"] = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(examples[i]["input_ids"])
        for key, values in examples[i].items():
            out[key][row, :n] = torch.tensor(values)
        out["attention_mask"][row, :n] = 1
    return out


def make_optimizer(model, recipe: dict, total_steps: int, own_rate: tuple[list, float] | None = None):
    """AdamW (no decay on biases and norms) with linear warmup then linear decay to zero.

    ``own_rate``: (parameters, peak lr) for parameters trained at a rate of their own, without decay
    (QAT's learned ranges)."""
    import torch

    own = {id(p) for p in own_rate[0]} if own_rate else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if own_rate:
        groups.append({"params": list(own_rate[0]), "weight_decay": 0.0, "lr": own_rate[1]})
    optimizer = torch.optim.AdamW(groups, lr=recipe["lr"])
    warmup = int(total_steps * recipe["warmup_ratio"])

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def loss_fn(logits, labels, num_labels: int):
    """Cross-entropy for classification, MSE for regression (STS-B, one output)."""
    import torch.nn.functional as F

    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1), labels)
    return F.cross_entropy(logits, labels)


def train(model, examples, labels: np.ndarray, recipe: dict, pad_id: int, *, progress: bool = True) -> None:
    """Run the recipe's epochs over ``examples`` (in place on ``model``)."""
    import torch

    rng = np.random.default_rng(recipe["seed"])
    lengths = np.array([len(e["input_ids"]) for e in examples])
    steps_per_epoch = math.ceil(len(examples) / recipe["batch_size"])
    epochs = recipe["epochs"]
    total = max(1, math.ceil(steps_per_epoch * epochs))
    optimizer, scheduler = make_optimizer(model, recipe, total)
    target = torch.tensor(labels)
    model.train()
    bar = tqdm(total=total, desc=f"train {recipe['task']}", unit="step", disable=not progress)
    step = 0
    while step < total:
        for idx in bucket_batches(lengths, recipe["batch_size"], rng):
            logits = model(**collate(examples, idx, pad_id)).logits
            loss = loss_fn(logits, target[idx], model.config.num_labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=f"{step / steps_per_epoch:.2f}")
            if step >= total:
                break
    bar.close()
    model.eval()


def predict_torch(
    model, tokenizer, split: GlueSplit, *, batch_size: int = 32, max_length: int = 128, progress: bool = True
) -> np.ndarray:
    """Logits for every example of ``split``, in its order (batched by length)."""
    import torch

    examples = encode(tokenizer, split, max_length)
    lengths = np.array([len(e["input_ids"]) for e in examples])
    order = np.argsort(lengths, kind="stable")
    logits = np.zeros((len(split), model.config.num_labels), np.float32)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    model.eval()
    with torch.no_grad():
        for idx in tqdm(batches, desc=f"eval {split.task.name}", unit="batch", disable=not progress):
            logits[idx] = model(**collate(examples, idx, tokenizer.pad_token_id or 0)).logits.float().numpy()
    return logits


def score_logits(split: GlueSplit, logits: np.ndarray) -> dict:
    """The GLUE metric of ``logits`` on ``split`` (key ``score`` is the headline number)."""
    return score(split.task, predictions_from_logits(split.task, logits), split.labels)


def evaluate_torch(
    model: str | Path, split: GlueSplit, *, batch_size: int = 32, max_length: int = 128, progress: bool = True
) -> dict:
    """The GLUE metric of a checkpoint (name or HF directory) in PyTorch, the reference for ONNX scores."""
    from transformers import AutoTokenizer

    source = resolve_model(str(model))
    if source.num_labels != split.task.num_labels:
        raise UsageError(
            f"{source.name} has {source.num_labels} labels but {split.task.name} needs {split.task.num_labels}"
        )
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    logits = predict_torch(
        load_model(source, attn_implementation="sdpa"),
        tokenizer,
        split,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
    )
    return score_logits(split, logits)


def directory_files(path: str | Path) -> list[Path]:
    """The files :func:`atomic_directory` would replace at ``path``: outputs too, for the path guard."""
    path = Path(path)
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds.

    The folder gets the user's umask (``mkdtemp`` makes it 0700); a failed swap puts the old one back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        moved = path.exists()
        if moved:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if moved:
                os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _label_config(config, task) -> None:
    """Name the labels in the saved config, so the checkpoint explains itself to HF tools."""
    if task.labels is None:
        config.problem_type = "regression"
        return
    config.problem_type = "single_label_classification"
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {label: i for i, label in enumerate(task.labels)}


def _versions() -> dict[str, str]:
    import platform

    import torch
    import transformers

    import qonnx_bert

    return {
        "qonnx_bert": qonnx_bert.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def finetune(recipe: dict, data_dir: str | Path | None, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Fine-tune ``recipe["base"]`` on ``recipe["task"]``, score it on dev, save it to ``out_dir``.

    Returns the record also written to ``out_dir/qonnx_recipe.json``: the full
    recipe, the PyTorch dev metrics (the reference for later ONNX scores),
    example counts, timings and library versions.
    """
    import torch
    from transformers import AutoTokenizer

    recipe = complete_recipe(recipe)
    task = get_task(recipe["task"])
    train_split = subsample(load_task(task.name, "train", data_dir), recipe["max_train_examples"], recipe["seed"])
    dev_split = load_task(task.name, "dev", data_dir)
    torch.set_num_threads(os.cpu_count() or 1)
    seed_everything(recipe["seed"])
    source = replace(resolve_model(recipe["base"]), head_seed=recipe["seed"])
    with atomic_directory(out_dir) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(source.path)
        model = load_model(source, num_labels=task.num_labels, attn_implementation="sdpa")
        start = time.perf_counter()
        examples = encode(tokenizer, train_split, recipe["max_length"])
        train(model, examples, train_split.labels, recipe, tokenizer.pad_token_id or 0, progress=progress)
        train_seconds = time.perf_counter() - start
        _label_config(model.config, task)
        logits = predict_torch(
            model, tokenizer, dev_split, batch_size=64, max_length=recipe["max_length"], progress=progress
        )
        record = {
            "recipe": recipe,
            "dev": score_logits(dev_split, logits),
            "train_examples": len(train_split),
            "dev_examples": len(dev_split),
            "train_seconds": round(train_seconds, 1),
            "threads": torch.get_num_threads(),
            "versions": _versions(),
        }
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")
    return record

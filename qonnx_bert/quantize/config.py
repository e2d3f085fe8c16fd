"""Typed, frozen configurations of the quantization schemes: one class per scheme.

A configuration is the whole of what a scheme is asked to do, so a run replays
exactly from its JSON (``to_dict``/``from_dict``, ``qonnx quantize --save-config``
and ``--config``). Every value is checked when the object is made and every
problem is reported at once, as a ``ConfigError`` naming the field (the CLI words
fields as flags). Third-party schemes subclass ``SchemeConfig`` and register
under the ``qonnx.schemes`` entry-point group (``schemes/registry.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from qonnx_bert.calibration.weight_grid import BITS as WEIGHT_BITS
from qonnx_bert.calibration.weight_grid import Granularity
from qonnx_bert.core.errors import UsageError
from qonnx_bert.quantize.lowbit import LowBitConfig, lowbit_config


class Choice(str, Enum):
    """An option with named values; prints as its value (``outlier``, not ``Grouping.OUTLIER``)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Grouping(Choice):
    """How PEG cuts the embedding dimensions into K groups."""

    EQUAL = "equal"  # K equal-size groups (the paper)
    OUTLIER = "outlier"  # uneven groups that isolate the widest dimensions (ours)


class Permutation(Choice):
    """How PEG makes each group's dimensions contiguous."""

    NONE = "none"  # groups of consecutive dimensions, no permutation
    LAYER = "layer"  # a Gather before and after each FFN (the paper)
    MODEL = "model"  # one order for all layers folded into the weights: no Gather at run time


class Target(Choice):
    """The runtime a lowering is made for."""

    PORTABLE = "portable"  # every provider, QNN HTP included: every activation quantized
    CPU = "cpu"  # the CPU provider only: only MatMul inputs quantized, the rest float (``passes.plan.cpu_plan``)


class ConfigError(UsageError):
    """Invalid configuration values; ``problems`` holds (field, what is wrong) pairs, all of them.

    Raised when a config is made, and by a scheme when a value does not fit the model
    (``groups`` larger than the hidden size); the CLI words each field as its flag.
    """

    def __init__(self, problems: list[tuple[str, str]], scheme: str = ""):
        self.scheme = scheme
        self.problems = problems
        super().__init__((f"{scheme}: " if scheme else "") + "; ".join(f"{name} {why}" for name, why in problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _enum_value(cls: type[Enum], value: Any) -> Enum | None:
    try:
        return cls(value)
    except ValueError:
        return None


@dataclass(frozen=True, kw_only=True)
class SchemeConfig:
    """What every scheme takes: roles kept in uint16 on top of it.

    ``int16`` holds role patterns (``layer.*.ffn.residual_sum``, ``layer.4-5.ffn.*``);
    ``int16_from`` a selection file saved by an earlier ``auto-mp`` run.
    """

    scheme: ClassVar[str] = ""
    int16: tuple[str, ...] = ()
    int16_from: str | None = None
    # Low-bit weights on top of any scheme (the paper's Tables 7 and 12; ``quantize/lowbit.py``).
    weight_bits: int | None = None  # MatMul/Gemm weights; None: the scheme's int8 per-tensor
    weight_granularity: Granularity = Granularity.PER_CHANNEL
    embedding_bits: int | None = None  # the word embedding table; None: int8
    embedding_granularity: Granularity = Granularity.PER_CHANNEL  # per-channel = one scale per row
    block_size: int = 32  # elements per scale with the ``block`` granularity
    adaround: int | None = None  # AdaRound iterations for <= 4-bit linear weights (None: round to nearest)

    def __init_subclass__(cls, scheme: str = "", **kwargs: Any) -> None:
        """``class W8A8Config(SchemeConfig, scheme="w8a8")``: a subclass adding no field needs no decorator."""
        super().__init_subclass__(**kwargs)
        cls.scheme = scheme or cls.scheme

    @classmethod
    def summary(cls) -> str:
        """The help line: the first line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            enum = _ENUM_FIELDS.get(f.name)
            if enum is not None and not isinstance(value, enum):
                coerced = _enum_value(enum, value)
                if coerced is None:
                    problems.append((f.name, f"is {value!r}; choose one of: {', '.join(e.value for e in enum)}"))
                else:
                    object.__setattr__(self, f.name, coerced)
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        problems += self._problems()
        if problems:
            raise ConfigError(problems, self.scheme)

    def lowbit(self) -> LowBitConfig:
        return lowbit_config(
            self.weight_bits,
            self.weight_granularity,
            self.embedding_bits,
            self.embedding_granularity,
            self.block_size,
            self.adaround,
        )

    def _problems(self) -> list[tuple[str, str]]:
        problems = []
        for name in ("weight_bits", "embedding_bits"):
            bits = getattr(self, name)
            if bits is not None and bits not in WEIGHT_BITS:
                problems.append((name, f"is {bits!r}; choose one of: {', '.join(map(str, WEIGHT_BITS))}"))
        if not (_is_int(self.block_size) and self.block_size >= 2 and not self.block_size & (self.block_size - 1)):
            problems.append(("block_size", f"is {self.block_size!r}; give a power of two >= 2 (e.g. 32)"))
        if self.adaround is not None and not (_is_int(self.adaround) and self.adaround >= 1):
            problems.append(("adaround", f"is {self.adaround!r}; give a number of iterations >= 1"))
        elif self.adaround is not None and (self.weight_bits is None or self.weight_bits > 4):
            problems.append(("adaround", "rounds <= 4-bit weights only; set the weight bits to 4 or 2"))
        if not all(isinstance(p, str) and p for p in self.int16):
            problems.append(("int16", "must be a list of non-empty role patterns"))
        if self.int16_from is not None and not (isinstance(self.int16_from, str) and self.int16_from):
            problems.append(("int16_from", "must be the path of a selection file"))
        return problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the scheme name plus every field (enums by value, tuples as lists)."""
        out: dict[str, Any] = {"scheme": self.scheme}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, kw_only=True)
class W8A8Config(SchemeConfig, scheme="w8a8"):
    """int8 symmetric weights, uint8 asymmetric activations, all per-tensor.

    ``target=cpu``: only the MatMul inputs are quantized, weights per output channel.
    """

    target: Target = Target.PORTABLE


class W8A32Config(SchemeConfig, scheme="w8a32"):
    """int8 symmetric per-tensor weights only; activations stay float."""


class W32A8Config(SchemeConfig, scheme="w32a8"):
    """uint8 asymmetric per-tensor activations only; weights stay float."""


class MixedPrecisionConfig(SchemeConfig, scheme="mp"):
    """W8A8 with each layer's FFN input, output, residual sum and the final output in uint16 (the paper's MP)."""


@dataclass(frozen=True, kw_only=True)
class AutoMpConfig(SchemeConfig, scheme="auto-mp"):
    """W8A8 plus the budget activations most sensitive to 8 bits, measured on the calibration data.

    ``budget``: how many activations (by role) go to 16 bits, a count (6) or a fraction of all (0.2).
    """

    budget: int | float | None = None

    def _problems(self) -> list[tuple[str, str]]:
        problems = super()._problems()
        b = self.budget
        if b is None:
            problems.append(
                ("budget", "is required: a number of activations to keep in 16 bits (6) or a fraction (0.2)")
            )
        elif not (_is_int(b) and b >= 0) and not (isinstance(b, float) and 0.0 <= b <= 1.0):
            problems.append(("budget", f"is {b!r}; give a count >= 0 or a fraction in [0, 1]"))
        return problems


@dataclass(frozen=True, kw_only=True)
class PegConfig(SchemeConfig, scheme="peg"):
    """PEG on the FFN: K outlier-aware groups of embedding dimensions, the permutation folded, wide GELU units split.

    Per-embedding-group quantization of the FFN input, output and residual sum (see
    ``schemes/peg.py``). ``groups``: K groups of embedding dimensions per layer; ``layers``:
    the layers PEG applies to (None: all); ``intermediate_groups``: J groups of GELU output
    units (1: the GELU output stays per-tensor, as in the paper).
    """

    groups: int = 6
    grouping: Grouping = Grouping.OUTLIER
    permutation: Permutation = Permutation.MODEL
    layers: tuple[int, ...] | None = None
    intermediate_groups: int = 2
    target: Target = Target.PORTABLE

    def _problems(self) -> list[tuple[str, str]]:
        problems = super()._problems()
        for name in ("groups", "intermediate_groups"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                problems.append((name, f"is {value!r}; give a whole number >= 1"))
        if self.layers is not None and not (self.layers and all(_is_int(i) and i >= 0 for i in self.layers)):
            problems.append(("layers", f"is {self.layers!r}; give layer indices >= 0, e.g. 0,2,4-5"))
        if self.grouping == Grouping.OUTLIER and self.permutation == Permutation.NONE:
            problems.append(("grouping", "outlier forms groups over range-sorted dimensions: it needs a permutation"))
        return problems


@dataclass(frozen=True, kw_only=True)
class PegEqualConfig(PegConfig, scheme="peg-equal"):
    """PEG as in the paper: K equal-size groups after a range-based permutation per layer."""

    grouping: Grouping = Grouping.EQUAL
    permutation: Permutation = Permutation.LAYER
    intermediate_groups: int = 1


@dataclass(frozen=True, kw_only=True)
class SmoothQuantConfig(SchemeConfig, scheme="smoothquant"):
    """W8A8 for the CPU provider with SmoothQuant's outlier migration from each MatMul input into its weights.

    ``alpha``: how much of each channel's range moves into the weights (0: none; 1: all;
    SmoothQuant's own default is 0.5; 0.75 scored higher on every MiniLM-L6 GLUE task
    measured, ``bench/results/cpu-peers-minilm-l6.md``), or ``"auto"``: the value of a grid
    whose model output is closest to FP32's on the calibration sequences. ``target`` is cpu
    only (see ``passes/smooth.py``): in BERT's post-LayerNorm blocks the smoothed tensor is
    also the residual input, so the per-channel ``Mul`` is exact only where the rest of the
    graph stays float.
    """

    alpha: float | str = 0.75
    target: Target = Target.CPU

    def _problems(self) -> list[tuple[str, str]]:
        problems = super()._problems()
        a = self.alpha
        number = isinstance(a, (int, float)) and not isinstance(a, bool)
        if a != "auto" and not (number and 0.0 <= a <= 1.0):
            problems.append(("alpha", f"is {a!r}; give a number in [0, 1] (default 0.75) or auto"))
        if self.target != Target.CPU:
            problems.append(
                (
                    "target",
                    f"is {self.target}; smoothquant is for the CPU provider only (the residual stream stays "
                    "float there); for QNN HTP use --scheme peg or mp",
                )
            )
        return problems


_ENUM_FIELDS: dict[str, type[Enum]] = {
    "grouping": Grouping,
    "permutation": Permutation,
    "target": Target,
    "weight_granularity": Granularity,
    "embedding_granularity": Granularity,
}

BUILTIN_CONFIGS: tuple[type[SchemeConfig], ...] = (
    W8A8Config,
    W8A32Config,
    W32A8Config,
    MixedPrecisionConfig,
    AutoMpConfig,
    PegConfig,
    PegEqualConfig,
    SmoothQuantConfig,
)


def config_fields(cls: type[SchemeConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def make_config(cls: type[SchemeConfig], values: dict[str, Any]) -> SchemeConfig:
    """``cls(**values)``, with unknown keys reported like any other problem (not silently ignored)."""
    names = config_fields(cls)
    problems = [
        (k, f"is not a setting of {cls.scheme} (its settings: {', '.join(names)})") for k in values if k not in names
    ]
    try:
        config = cls(**{k: v for k, v in values.items() if k in names})
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems, cls.scheme)
    return config

"""Low-bit weights and word embeddings on any scheme's QDQ model (the paper's Tables 7 and 12).

``lower_weight_bits`` runs after the scheme's QDQ insertion: it re-quantizes the MatMul/Gemm
weights at ``LowBitConfig.weights`` and the word embedding table at ``.embeddings`` from the
scheme's float weights, and writes them packed (INT4/INT2) so the file really shrinks.
Position and token-type tables keep the scheme's int8 (they are 0.6% of MiniLM's weights).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx
from tqdm import tqdm

from qonnx_bert.calibration.adaround import AdaRoundConfig, adaround, input_grams
from qonnx_bert.calibration.weight_grid import Granularity, QuantizedWeight, WeightGrid, quantize_weight
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import model_bytes
from qonnx_bert.inputs.sequences import Sequences
from qonnx_bert.passes.lowbit_weights import WeightSite, weight_sites, write_weights


@dataclass(frozen=True)
class LowBitConfig:
    """Bits of the linear weights and of the word embedding table; None keeps the scheme's int8 per-tensor."""

    weights: WeightGrid | None = None
    embeddings: WeightGrid | None = None
    adaround: AdaRoundConfig | None = None  # learned rounding for linear weights at <= 4 bits

    def grid(self, site: WeightSite) -> WeightGrid | None:
        return self.embeddings if site.embedding else self.weights

    def fields(self) -> dict:
        """These settings as the flat scheme-config fields of ``lowbit_config`` (``config_for(scheme, **fields)``)."""
        out: dict = {}
        for kind, grid in (("weight", self.weights), ("embedding", self.embeddings)):
            if grid is not None:
                out |= {
                    f"{kind}_bits": grid.bits,
                    f"{kind}_granularity": grid.granularity,
                    "block_size": grid.block_size,
                }
        if self.adaround is not None:
            out["adaround"] = self.adaround.iterations
        return out


def lowbit_config(
    weight_bits: int | None = None,
    weight_granularity: Granularity = Granularity.PER_CHANNEL,
    embedding_bits: int | None = None,
    embedding_granularity: Granularity = Granularity.PER_CHANNEL,
    block_size: int = 32,
    adaround: int | None = None,
) -> LowBitConfig:
    """The low-bit settings as flat values (what a scheme config and the CLI hold): None bits keep int8."""

    def grid(bits: int | None, granularity: Granularity) -> WeightGrid | None:
        return None if bits is None else WeightGrid(bits, granularity, block_size)

    return LowBitConfig(
        grid(weight_bits, weight_granularity),
        grid(embedding_bits, embedding_granularity),
        AdaRoundConfig(iterations=adaround) if adaround else None,
    )


def describe(grid: WeightGrid, what: str, count: int) -> str:
    block = f" of {grid.block_size}" if grid.granularity.value == "block" else ""
    ranges = "MSE" if grid.bits < 8 else "min-max"
    return f"{what}: {count} at {grid.bits}-bit symmetric {grid.granularity.value}{block} ({ranges} ranges)"


def _check_runnable(site: WeightSite, grid: WeightGrid) -> None:
    """ONNX Runtime 1.32's CPU provider fuses DQ(int2) -> MatMul with a quantized input into QLinearMatMul,
    which has no int2 kernel, and then fails to load the model: refuse to write such a file."""
    if grid.bits == 2 and site.quantized_input:
        raise UsageError(
            "2-bit weights with quantized activations do not load in ONNX Runtime's CPU provider "
            "(QLinearMatMul has no int2 kernel): use `weight_bits=4`, or a weights-only scheme (w8a32)"
        )


def _adaround(
    chosen: list[tuple[WeightSite, QuantizedWeight]],
    floats: onnx.ModelProto,
    sequences: Sequences,
    config: AdaRoundConfig,
) -> list[tuple[WeightSite, QuantizedWeight]]:
    """Replace the round-to-nearest integers of <= 4-bit linear weights by AdaRound's."""
    inputs = {n.name: n.input[0] for n in floats.graph.node}
    todo = [(s, q) for s, q in chosen if q.bits <= 4 and not s.embedding]
    if not todo:
        return chosen
    grams = input_grams(floats, sorted({inputs[s.consumer] for s, _ in todo}), sequences)
    rounded = {}
    for site, q in tqdm(todo, desc="AdaRound", unit="layer", disable=None):
        flip = site.channel_axis == 0  # Gemm with transB: y = x @ W.T
        w, s = (site.values.T, q.full_scale().T) if flip else (site.values, q.full_scale())
        ints = adaround(w, s, 2 ** (q.bits - 1) - 1, grams[inputs[site.consumer]], config)
        rounded[site.tensor] = replace(q, integers=ints.T if flip else ints)
    return [(s, rounded.get(s.tensor, q)) for s, q in chosen]


def lower_weight_bits(
    quantized: onnx.ModelProto, floats: onnx.ModelProto, config: LowBitConfig, sequences: Sequences | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """``quantized`` with its weights at ``config``'s bits, and one note per kind of weight rewritten.

    ``floats`` is the float model the scheme quantized (``Plan.model``): weights are
    re-quantized from their float values, never from the scheme's int8 integers. AdaRound
    learns on ``sequences`` (``RangeTable.sequences()``: the calibration set).
    """
    chosen: list[tuple[WeightSite, QuantizedWeight]] = []
    for site in weight_sites(quantized, floats):
        grid = config.grid(site)
        if grid is not None:
            _check_runnable(site, grid)
            chosen.append((site, quantize_weight(site.values, grid, site.channel_axis)))
    if config.adaround is not None:
        if sequences is None:
            raise UsageError("AdaRound needs the calibration sequences: pass a ranges file from `qonnx calibrate`")
        chosen = _adaround(chosen, floats, sequences, config.adaround)
    notes = [
        describe(grid, what, sum(1 for s, _ in chosen if s.embedding == emb))
        for grid, what, emb in ((config.weights, "weights", False), (config.embeddings, "word embeddings", True))
        if grid is not None
    ]
    return write_weights(quantized, chosen), notes


def size_ratio(fp32: onnx.ModelProto, model: onnx.ModelProto) -> float:
    """How many times smaller than FP32 the serialized model is (the paper's memory column)."""
    return model_bytes(fp32) / model_bytes(model)

"""``qonnx outliers``: planted outliers are found, counted as NumPy counts them, and plotted."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qonnx_bert.analysis.outliers import render, scan
from qonnx_bert.cli import main
from qonnx_bert.core.runtime import exposing_session
from qonnx_bert.graph.prepare import prepare
from qonnx_bert.graph.roles import find_roles
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.sequences import first_sequences

LAYER, DIM, NEURON = 1, 7, 3


def plant(model: onnx.ModelProto, layer: int, dim: int, neuron: int, alpha: float) -> onnx.ModelProto:
    """FFN output dim ``dim`` of ``layer`` := ``alpha`` x GELU neuron ``neuron``: large on some tokens, in one dim."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    gelu = find_roles(prepare(out)).roles[f"layer.{layer}.ffn.gelu"]
    matmul = next(n for n in out.graph.node if n.op_type == "MatMul" and n.input[0] == gelu)
    w = numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == matmul.input[1])).copy()
    w[:, dim] = 0.0
    w[neuron, dim] = alpha
    out.graph.initializer.append(numpy_helper.from_array(w, matmul.input[1] + "_planted"))  # the weight may be shared
    matmul.input[1] += "_planted"
    return out


@pytest.fixture(scope="module")
def planted(tiny_onnx, tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "planted.onnx"
    onnx.save(plant(onnx.load(str(tiny_onnx)), LAYER, DIM, NEURON, 500.0), str(path))
    return path


def test_planted_dim_is_the_top_outlier_dim_with_numpy_counts(planted, tiny_onnx):
    model, sequences = onnx.load(str(planted)), first_sequences(6)
    result = scan(model, sequences)
    res = result.tensors[(LAYER, "residual_sum")]
    assert res.dims[0].dim == DIM and res.top_share(1) == 1.0 and result.worst_layer() == LAYER
    assert result.tensors[(0, "residual_sum")].total == 0
    # NumPy: |x - mean| > 6 std over all values of the residual sum (one sequence per run: no padding)
    tensor = find_roles(prepare(model)).roles[f"layer.{LAYER}.ffn.residual_sum"]
    session = exposing_session(prepare(model), [tensor])
    x = np.concatenate(
        [session.run([tensor], Encoder.from_model(model).feeds([t]))[0][0] for t in sequences.texts_a]
    ).astype(np.float64)
    counts = (np.abs(x - x.mean()) > 6 * x.std()).sum(axis=0)
    assert res.dims[0].count == counts[DIM] > 0 and counts.sum() == counts[DIM]
    assert res.dims[0].max_abs == pytest.approx(np.abs(x[:, DIM]).max())
    assert f"| {LAYER} | {DIM} | {counts[DIM]} |" in render(result)
    assert scan(onnx.load(str(tiny_onnx)), sequences).tensors[(LAYER, "residual_sum")].total == 0  # not planted: none


def test_cli_writes_the_figure_and_the_text(planted, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "fig" / "outliers.png"
    assert main(["outliers", str(planted), "-n", "4", "-o", str(png)]) == 0
    assert f"| {LAYER} | {DIM} |" in capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    assert png.with_suffix(".md").read_text().startswith(f"Figure: layer {LAYER}.")
    assert main(["outliers", str(planted), "-n", "2", "--layer", "5"]) == 2
    assert "--layer 5 is out of range: this model has layers 0-1" in capsys.readouterr().err

"""GLUE metrics against hand-computed values and SciPy as an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from qonnx_bert.core.errors import UsageError
from qonnx_bert.inputs.glue import TASKS, predictions_from_logits, score
from qonnx_bert.inputs.glue.metrics import _rank, accuracy, f1_binary, matthews_corrcoef, pearson, spearman


def _binary(tp: int, fp: int, fn: int, tn: int) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels with the given confusion-matrix counts, shuffled."""
    preds = np.array([1] * tp + [1] * fp + [0] * fn + [0] * tn)
    labels = np.array([1] * tp + [0] * fp + [1] * fn + [0] * tn)
    order = np.random.default_rng(0).permutation(preds.size)
    return preds[order], labels[order]


def test_mcc_hand_computed():
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (20 - 2) / sqrt(7*6*6*5)
    preds, labels = _binary(tp=5, fp=2, fn=1, tn=4)
    assert matthews_corrcoef(preds, labels) == pytest.approx(18 / np.sqrt(1260))
    preds, labels = _binary(tp=3, fp=1, fn=1, tn=3)
    assert matthews_corrcoef(preds, labels) == pytest.approx(0.5)


def test_mcc_extremes_and_degenerate():
    y = np.array([0, 1, 1, 0, 1])
    assert matthews_corrcoef(y, y) == pytest.approx(1.0)
    assert matthews_corrcoef(1 - y, y) == pytest.approx(-1.0)
    assert matthews_corrcoef(np.ones(5, int), y) == 0.0  # constant prediction
    assert matthews_corrcoef(y, np.zeros(5, int)) == 0.0  # constant labels
    assert matthews_corrcoef([2, 0, 1, 2], [2, 0, 1, 2]) == pytest.approx(1.0)  # multiclass


def test_mcc_equals_phi_coefficient():
    # for two binary variables MCC is their Pearson correlation
    rng = np.random.default_rng(1)
    p, y = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert matthews_corrcoef(p, y) == pytest.approx(stats.pearsonr(p, y)[0])


def test_accuracy_and_f1():
    preds, labels = _binary(tp=3, fp=1, fn=1, tn=5)
    assert accuracy(preds, labels) == pytest.approx(0.8)
    assert f1_binary(preds, labels) == pytest.approx(0.75)  # 2*3 / (2*3 + 1 + 1)
    assert f1_binary([0, 0, 0], [0, 0, 0]) == 0.0  # no positive anywhere
    assert f1_binary([1, 1, 1], [1, 1, 1]) == 1.0


def test_pearson_spearman_match_scipy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=40)
    y = 0.6 * x + rng.normal(size=40)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    # ties, as in STS-B's gold scores
    xt, yt = np.round(x), np.round(y * 2) / 2
    assert spearman(xt, yt) == pytest.approx(stats.spearmanr(xt, yt)[0])


def test_rank_averages_ties():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(_rank(x), stats.rankdata(x))
    np.testing.assert_allclose(_rank(x), [5, 1.5, 5, 3, 5, 1.5])


def test_correlations_degenerate():
    y = np.array([1.0, 2.0, 3.0])
    assert pearson(np.full(3, 2.5), y) == 0.0
    assert spearman(np.full(3, 2.5), y) == 0.0
    assert pearson(y, y) == pytest.approx(1.0)


@pytest.mark.parametrize("fn", [accuracy, f1_binary, matthews_corrcoef, pearson, spearman])
def test_empty_and_mismatched_input(fn):
    with pytest.raises(UsageError, match="no examples"):
        fn([], [])
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        fn([0, 1], [0, 1, 1])


def test_score_per_task_type():
    preds, labels = _binary(tp=3, fp=1, fn=1, tn=3)
    cola = score(TASKS["cola"], preds, labels)
    assert cola == pytest.approx({"mcc": 0.5, "score": 50.0})
    assert set(score(TASKS["sst2"], preds, labels)) == {"accuracy", "score"}
    rte = score(TASKS["rte"], preds, labels)
    assert rte == pytest.approx({"accuracy": 0.75, "score": 75.0})
    for name in ("mrpc", "qqp"):
        out = score(TASKS[name], preds, labels)
        assert out == pytest.approx({"accuracy": 0.75, "f1": 0.75, "score": 75.0})
    preds, labels = _binary(tp=3, fp=1, fn=0, tn=0)
    assert score(TASKS["mrpc"], preds, labels)["score"] == pytest.approx(100 * (0.75 + 6 / 7) / 2)
    mnli = score(TASKS["mnli"], np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    assert mnli["score"] == pytest.approx(75.0)


def test_score_stsb():
    x = np.array([0.5, 2.0, 3.5, 4.0, 1.0])
    y = np.array([1.0, 2.5, 3.0, 5.0, 0.0])
    out = score(TASKS["stsb"], x, y)
    assert set(out) == {"pearson", "spearman", "score"}
    expected = 100 * (stats.pearsonr(x, y)[0] + stats.spearmanr(x, y)[0]) / 2
    assert out["score"] == pytest.approx(expected)
    assert all(isinstance(v, float) for v in out.values())


def test_predictions_from_logits():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]], dtype=np.float32)
    preds = predictions_from_logits(TASKS["rte"], logits)
    np.testing.assert_array_equal(preds, [1, 0, 1])
    assert preds.dtype == np.int64
    three = np.array([[0.1, 0.2, 0.9], [2.0, 0.0, 0.0]])
    np.testing.assert_array_equal(predictions_from_logits(TASKS["mnli"], three), [2, 0])
    reg = predictions_from_logits(TASKS["stsb"], np.array([[4.5], [1.25]]))
    np.testing.assert_allclose(reg, [4.5, 1.25])
    assert reg.dtype == np.float32
    np.testing.assert_allclose(predictions_from_logits(TASKS["stsb"], np.array([4.5, 1.25])), [4.5, 1.25])


def test_predictions_from_logits_wrong_head():
    with pytest.raises(UsageError, match="2 outputs per example but mnli has 3"):
        predictions_from_logits(TASKS["mnli"], np.zeros((4, 2)))

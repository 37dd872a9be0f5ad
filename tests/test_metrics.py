from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from streamrec.stream.quality_metrics import StreamingMetrics, exact_auc


def _stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(-1.2, 1.0, n)
    p = 1 / (1 + np.exp(-logits))
    y = (rng.random(n) < 1 / (1 + np.exp(-(logits + rng.normal(0, 1, n))))).astype(int)
    return p, y


def test_exact_auc_matches_sklearn_with_ties() -> None:
    p, y = _stream(5000, 1)
    p = np.round(p, 2)  # many ties
    assert exact_auc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


@pytest.mark.parametrize("batch", [1, 37, 512])
def test_streaming_metrics_match_offline_values(batch: int) -> None:
    p, y = _stream(20_000, 2)
    metrics = StreamingMetrics(window=3000)
    for start in range(0, len(p), batch):
        metrics.update(p[start:start + batch], y[start:start + batch])
    snap = metrics.snapshot()
    assert snap["examples"] == 20_000 and snap["positives"] == y.sum()
    assert snap["auc_error_bound"] <= 1e-4
    assert abs(snap["auc"] - roc_auc_score(y, p)) <= snap["auc_error_bound"] + 1e-12
    assert snap["auc_window"] == pytest.approx(roc_auc_score(y[-3000:], p[-3000:]), abs=1e-12)
    assert snap["logloss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    rate = y.mean()
    entropy = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert snap["normalized_entropy"] == pytest.approx(log_loss(y, p) / entropy, abs=1e-9)
    assert snap["calibration"] == pytest.approx(p.sum() / y.sum(), abs=1e-9)
    assert snap["logloss_window"] == pytest.approx(log_loss(y[-3000:], p[-3000:], labels=[0, 1]), abs=1e-9)


def test_lifetime_auc_is_exact_when_no_bin_mixes_labels() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    y = np.array([0, 1, 0, 1, 1])
    metrics = StreamingMetrics(window=10)
    metrics.update(p, y)
    assert metrics.auc_error_bound == 0.0
    assert metrics.auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_state_round_trip_restores_every_reading() -> None:
    p, y = _stream(4000, 3)
    a = StreamingMetrics(window=500)
    a.update(p[:2500], y[:2500])
    b = StreamingMetrics(window=500)
    b.load_state({k: v.copy() for k, v in a.state().items()})
    for m in (a, b):
        m.update(p[2500:], y[2500:])
    assert a.snapshot() == b.snapshot()


def test_mismatched_lengths_rejected() -> None:
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        StreamingMetrics().update(np.zeros(3), np.zeros(2))

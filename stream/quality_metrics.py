"""Streaming quality metrics for progressive validation (predict, update metrics, then learn).

Two named AUC flavours:

* **window AUC**: exact, over the most recent ``window`` predictions (a ring buffer; the
  rank computation runs when the value is read, not on every update).
* **lifetime AUC**: over every prediction since start, in constant memory. Scores are binned on
  the logit scale (2**20 bins over [-20, 20], width 3.8e-5). Pairs of opposite labels in the
  same bin count one half, exactly as tied scores do, so the binned value differs from the
  exact one by at most ``0.5 * sum_b pos_b * neg_b / (P * N)``; :attr:`StreamingMetrics.auc_error_bound`
  reports that bound with every reading, and it is 0 when no bin holds both labels.

Logloss, normalised entropy (logloss over the entropy of the observed click rate) and
calibration (mean prediction over observed rate) are running sums, lifetime and window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

LOGIT_RANGE = 20.0
LIFETIME_BINS = 1 << 20
EPS = 1e-7


def exact_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC with tied scores counting one half (as sklearn's ``roc_auc_score``)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # Average rank per run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], sorted_scores.size]
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(avg_rank, ends - starts)
    rank_sum = ranks[labels[order]].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def _entropy(rate: float) -> float:
    if rate <= 0.0 or rate >= 1.0:
        return float("nan")
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def logloss_terms(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each example's logloss, its prediction clipped to [EPS, 1 - EPS]."""
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


@dataclass
class _Sums:
    n: int = 0
    positives: int = 0
    prediction_sum: float = 0.0
    logloss_sum: float = 0.0

    @property
    def logloss(self) -> float:
        return self.logloss_sum / self.n if self.n else float("nan")

    @property
    def normalized_entropy(self) -> float:
        return self.logloss / _entropy(self.positives / self.n) if self.n else float("nan")

    @property
    def calibration(self) -> float:
        return self.prediction_sum / self.positives if self.positives else float("nan")


class StreamingMetrics:
    """Progressive-validation metrics; call :meth:`update` with each batch *before* learning on it."""

    def __init__(self, window: int = 10_000) -> None:
        if window < 1:
            raise ValueError("window must be positive")
        self.window = window
        self._ring_scores = np.zeros(window, dtype=np.float64)
        self._ring_labels = np.zeros(window, dtype=np.int8)
        self._ring_loss = np.zeros(window, dtype=np.float64)
        self._ring_next = 0
        self._ring_filled = 0
        # negatives' bins, then positives': one np.add.at at label * LIFETIME_BINS + bin per batch
        self._bins = np.zeros(2 * LIFETIME_BINS, dtype=np.int64)
        self._neg_bins, self._pos_bins = self._bins[:LIFETIME_BINS], self._bins[LIFETIME_BINS:]
        self._life = _Sums()

    # ------------------------------------------------------------------ update

    def update(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        y = np.asarray(labels).reshape(-1).astype(np.int8)
        if p.shape != y.shape:
            raise ValueError(f"{p.size} predictions but {y.size} labels")
        if p.size == 0:
            return
        prediction_sum = float(p.sum())
        if prediction_sum != prediction_sum:
            # A diverged model predicts NaN. Scored as 0.5 (no information), it shows up as AUC
            # 0.5 and a high logloss instead of crashing the worker; the quality gate holds its versions.
            p = np.where(np.isnan(p), 0.5, p)
            prediction_sum = float(p.sum())
        losses = logloss_terms(p, y)
        self._life.n += p.size
        self._life.positives += int(y.sum())
        self._life.prediction_sum += prediction_sum
        self._life.logloss_sum += float(losses.sum())
        np.add.at(self._bins, self._bin(p) + y.astype(np.int64) * LIFETIME_BINS, 1)
        self._ring_write(p, y, losses)

    @staticmethod
    def _bin(p: np.ndarray) -> np.ndarray:
        clipped = np.clip(p, 1e-12, 1 - 1e-12)
        logits = np.clip(np.log(clipped) - np.log1p(-clipped), -LOGIT_RANGE, LOGIT_RANGE)
        scaled = (logits + LOGIT_RANGE) * (LIFETIME_BINS / (2 * LOGIT_RANGE))
        return np.minimum(scaled.astype(np.int64), LIFETIME_BINS - 1)

    def _ring_write(self, p: np.ndarray, y: np.ndarray, losses: np.ndarray) -> None:
        if p.size >= self.window:
            p, y, losses = p[-self.window:], y[-self.window:], losses[-self.window:]
        start, stop = self._ring_next, self._ring_next + p.size
        # a plain slice in the common case (no wrap) instead of a gather index
        idx = slice(start, stop) if stop <= self.window else (start + np.arange(p.size)) % self.window
        self._ring_scores[idx] = p
        self._ring_labels[idx] = y
        self._ring_loss[idx] = losses
        self._ring_next = int((self._ring_next + p.size) % self.window)
        self._ring_filled = min(self.window, self._ring_filled + p.size)

    # ------------------------------------------------------------------ readings

    @property
    def examples(self) -> int:
        return self._life.n

    @property
    def positives(self) -> int:
        return self._life.positives

    @property
    def auc(self) -> float:
        return self._lifetime_auc()[0]

    @property
    def auc_error_bound(self) -> float:
        return self._lifetime_auc()[1]

    def _lifetime_auc(self) -> tuple[float, float]:
        pos, neg = self._pos_bins, self._neg_bins
        total_pos, total_neg = self._life.positives, self._life.n - self._life.positives
        if total_pos == 0 or total_neg == 0:
            return float("nan"), 0.0
        neg_below = np.cumsum(neg) - neg
        concordant = float(np.dot(pos, neg_below)) + 0.5 * float(np.dot(pos, neg))
        pairs = float(total_pos) * float(total_neg)
        return concordant / pairs, 0.5 * float(np.dot(pos, neg)) / pairs

    def _window_view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self._ring_filled
        return self._ring_scores[:n], self._ring_labels[:n], self._ring_loss[:n]

    @property
    def auc_window(self) -> float:
        scores, labels, _ = self._window_view()
        return exact_auc(scores, labels)

    @property
    def logloss(self) -> float:
        return self._life.logloss

    @property
    def normalized_entropy(self) -> float:
        return self._life.normalized_entropy

    @property
    def calibration(self) -> float:
        return self._life.calibration

    def window_sums(self) -> _Sums:
        scores, labels, losses = self._window_view()
        return _Sums(len(scores), int(labels.sum()), float(scores.sum()), float(losses.sum()))

    def snapshot(self) -> dict[str, float]:
        auc, bound = self._lifetime_auc()
        window = self.window_sums()
        return {
            "examples": self.examples,
            "positives": self.positives,
            "auc": auc,
            "auc_error_bound": bound,
            "auc_window": self.auc_window,
            "logloss": self.logloss,
            "logloss_window": window.logloss,
            "normalized_entropy": self.normalized_entropy,
            "normalized_entropy_window": window.normalized_entropy,
            "calibration": self.calibration,
            "calibration_window": window.calibration,
        }

    # ------------------------------------------------------------------ checkpointing

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that restore these metrics exactly (stored beside model weights)."""
        life = self._life
        return {
            "ring_scores": self._ring_scores, "ring_labels": self._ring_labels, "ring_loss": self._ring_loss,
            "pos_bins": self._pos_bins, "neg_bins": self._neg_bins,
            "scalars": np.array([self._ring_next, self._ring_filled, life.n, life.positives], dtype=np.int64),
            "sums": np.array([life.prediction_sum, life.logloss_sum], dtype=np.float64),
        }

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if state["ring_scores"].shape[0] != self.window:
            raise ValueError(f"saved window {state['ring_scores'].shape[0]} != configured {self.window}")
        self._ring_scores[:] = state["ring_scores"]
        self._ring_labels[:] = state["ring_labels"]
        self._ring_loss[:] = state["ring_loss"]
        self._pos_bins[:] = state["pos_bins"]
        self._neg_bins[:] = state["neg_bins"]
        ring_next, ring_filled, n, positives = (int(v) for v in state["scalars"])
        self._ring_next, self._ring_filled = ring_next, ring_filled
        self._life = _Sums(n, positives, float(state["sums"][0]), float(state["sums"][1]))


# ------------------------------------------------------------------ state as safetensors (in every version)


def metrics_blob(metrics: StreamingMetrics) -> bytes:
    state = metrics.state()
    compact: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("_bins"):  # 2^20 mostly-empty bins: keep only the occupied ones
            idx = np.flatnonzero(value)
            compact[f"{key}.index"], compact[f"{key}.count"] = idx.astype(np.int64), value[idx]
        else:
            compact[key] = np.ascontiguousarray(value)
    return np_save(compact, metadata={"window": str(metrics.window)})


def load_metrics(blob: bytes, window: int) -> StreamingMetrics:
    arrays = np_load(blob)
    metrics = StreamingMetrics(window)
    state = {k: v for k, v in arrays.items() if ".index" not in k and ".count" not in k}
    for key in ("pos_bins", "neg_bins"):
        full = np.zeros_like(metrics.state()[key])
        full[arrays[f"{key}.index"]] = arrays[f"{key}.count"]
        state[key] = full
    metrics.load_state(state)
    return metrics

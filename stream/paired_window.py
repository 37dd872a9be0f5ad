"""Two models' predictions on the same recent examples: the evidence the quality gate judges by.

The trainer's learning model (the *candidate*) predicts every example before it learns from it
(progressive validation); a frozen copy of the live version (the *reference*) predicts the same
examples. A ring buffer keeps the last ``size`` of them. Because both predictions are of the same
examples, neither a noisy window nor a change of the stream (a new regime that makes every model
look worse) can make the comparison unfair, as comparing a candidate with a number the live
version had at its own publish time did.

The summary gives both AUCs on the window and the mean per-example log-loss gain of the candidate
over the reference (positive: the candidate is better) with its standard error, so a gate can ask
for an effect that is both large enough and unlikely to be noise.
"""

from __future__ import annotations

import math

import numpy as np

from streamrec.stream.quality_metrics import EPS, exact_auc

PAIRED_KEYS = ("paired_version", "paired_examples", "paired_auc", "paired_reference_auc",
               "paired_logloss_gain", "paired_logloss_gain_se")


def _logloss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


class PairedWindow:
    """The last ``size`` examples' labels with the candidate's and the reference's predictions."""

    def __init__(self, reference_version: int, size: int = 10_000) -> None:
        self.reference_version = reference_version
        self.size = size
        self._candidate = np.zeros(size, dtype=np.float32)
        self._reference = np.zeros(size, dtype=np.float32)
        self._labels = np.zeros(size, dtype=np.float32)
        self._written = 0

    def update(self, candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> None:
        n = len(labels)
        if n > self.size:
            candidate, reference, labels = candidate[-self.size:], reference[-self.size:], labels[-self.size:]
            self._written += n - self.size
            n = self.size
        start = self._written % self.size
        first = min(n, self.size - start)
        for target, values in ((self._candidate, candidate), (self._reference, reference), (self._labels, labels)):
            target[start:start + first] = values[:first]
            target[:n - first] = values[first:]
        self._written += n

    @property
    def examples(self) -> int:
        return min(self._written, self.size)

    def summary(self) -> dict[str, float]:
        n = self.examples
        out = dict.fromkeys(PAIRED_KEYS, math.nan)
        out["paired_version"], out["paired_examples"] = float(self.reference_version), float(n)
        if n == 0:
            return out
        c, r, y = self._candidate[:n], self._reference[:n], self._labels[:n]
        gain = _logloss(r, y) - _logloss(c, y)
        out.update(paired_auc=exact_auc(c, y), paired_reference_auc=exact_auc(r, y),
                   paired_logloss_gain=float(gain.mean()),
                   paired_logloss_gain_se=float(gain.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan)
        return out


def no_reference() -> dict[str, float]:
    """The summary while no reference is set: no evidence."""
    out = dict.fromkeys(PAIRED_KEYS, math.nan)
    out["paired_examples"] = 0.0
    return out

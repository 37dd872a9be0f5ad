"""FTRL-Proximal one example at a time, compiled (numba): McMahan et al.'s Algorithm 1 exactly.

A mini-batch step sums each coordinate's gradients over the batch with the weights held at their
values before it (models/ftrl.py); here every example is predicted with the weights the examples
before it left, then updates them, as a per-example learner (River's, Vowpal Wabbit's) does, at
the cost of one pass over the batch's coordinates in a compiled loop. Imported on first use, as
models/key_kernels.py is, so that a process that never learns this way never loads numba.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _weight(z: float, n: float, alpha: float, beta: float, l1: float, l2: float) -> float:
    if abs(z) <= l1:
        return 0.0
    sign = 1.0 if z > 0 else -1.0
    return -(z - sign * l1) / ((beta + math.sqrt(n)) / alpha + l2)


@numba.njit(cache=True, nogil=True)
def learn_examples(rows: np.ndarray, labels: np.ndarray, offsets: np.ndarray, z: np.ndarray, n: np.ndarray,
                   dirty: np.ndarray, alpha: float, beta: float, l1: float, l2: float, out: np.ndarray) -> None:
    """For each example ``b`` (a row of ``rows``, its coordinates): ``out[b]`` = the probability
    the current weights give it, with ``offsets[b]`` added to its logit (a network's, held for
    the batch), then every coordinate it has steps on ``p - y`` (a coordinate it has twice steps
    twice). ``z``, ``n`` and ``dirty`` change in place."""
    examples, width = rows.shape
    w = np.empty(width)
    for b in range(examples):
        logit = offsets[b]
        for k in range(width):
            i = rows[b, k]
            w[k] = _weight(z[i], n[i], alpha, beta, l1, l2)
            logit += w[k]
        # clamped as torch's sigmoid saturates: exp of a large negative logit overflows to inf
        if logit >= 0:
            p = 1.0 / (1.0 + math.exp(-logit))
        else:
            e = math.exp(logit)
            p = e / (1.0 + e)
        out[b] = p
        g = p - labels[b]
        g2 = g * g
        for k in range(width):
            i = rows[b, k]
            old = n[i]
            sigma = (math.sqrt(old + g2) - math.sqrt(old)) / alpha
            z[i] += g - sigma * w[k]
            n[i] = old + g2
            dirty[i] = True

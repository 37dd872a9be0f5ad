"""FTRL-Proximal, per coordinate, vectorised in torch.

McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013, Algorithm 1. State is
``z`` and ``n`` per coordinate; the weight is derived when needed::

    w_i = 0                                                   if |z_i| <= l1
    w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise

and a gradient ``g_i`` updates only the coordinates it touches::

    sigma_i = (sqrt(n_i + g_i^2) - sqrt(n_i)) / alpha
    z_i += g_i - sigma_i w_i
    n_i += g_i^2

In a mini-batch, ``g_i`` is the sum of the per-example gradients of coordinate i, with ``w``
held at its value before the batch. With batch size 1 this is exactly Algorithm 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FTRLConfig:
    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 1.0
    l2: float = 1.0


class FTRLProximal:
    def __init__(self, size: int, config: FTRLConfig = FTRLConfig()) -> None:
        self.config = config
        # float64: z accumulates millions of small terms over a long stream.
        self.z = torch.zeros(size, dtype=torch.float64)
        self.n = torch.zeros(size, dtype=torch.float64)
        # coordinates updated since the last delta was taken (models/base.py, delta_bytes)
        self.dirty = torch.zeros(size, dtype=torch.bool)

    def weights(self, ids: torch.Tensor) -> torch.Tensor:
        c = self.config
        z, n = self.z[ids], self.n[ids]
        w = -(z - torch.sign(z) * c.l1) / ((c.beta + torch.sqrt(n)) / c.alpha + c.l2)
        return torch.where(z.abs() <= c.l1, torch.zeros_like(w), w)

    def update(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """Apply per-coordinate gradients ``grads`` to the *unique* coordinates ``ids``."""
        grads = grads.to(torch.float64)
        w = self.weights(ids)
        n = self.n[ids]
        sigma = (torch.sqrt(n + grads * grads) - torch.sqrt(n)) / self.config.alpha
        self.z[ids] = self.z[ids] + grads - sigma * w
        self.n[ids] = n + grads * grads
        self.dirty[ids] = True

    def step(self, ids: torch.Tensor, example_grads: torch.Tensor) -> None:
        """Sum the per-example gradients over every occurrence of each id in ``ids`` (B, K); update."""
        unique, inverse = torch.unique(ids, return_inverse=True)
        self.step_unique(unique, inverse, example_grads)

    def step_unique(self, unique: torch.Tensor, inverse: torch.Tensor, example_grads: torch.Tensor) -> None:
        """As :meth:`step`, with ``torch.unique(ids, return_inverse=True)`` already computed."""
        per_occurrence = example_grads.to(torch.float64).unsqueeze(1).expand(inverse.shape)
        summed = torch.zeros(unique.shape[0], dtype=torch.float64)
        summed.index_add_(0, inverse.reshape(-1), per_occurrence.reshape(-1))
        self.update(unique, summed)

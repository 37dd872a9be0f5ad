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

from models.batch_unique import BatchUnique


@dataclass(frozen=True)
class FTRLConfig:
    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 1.0
    l2: float = 1.0


@dataclass
class CoordinateState:
    """The state of a batch's distinct coordinates, read once for both the forward pass and the
    update (reading ``z`` and ``n`` twice was a third of the wide part's cost)."""

    ids: torch.Tensor
    z: torch.Tensor
    n: torch.Tensor
    sqrt_n: torch.Tensor
    w: torch.Tensor


class FTRLProximal:
    def __init__(self, size: int, config: FTRLConfig = FTRLConfig()) -> None:
        self.config = config
        # float64: z accumulates millions of small terms over a long stream.
        self.z = torch.zeros(size, dtype=torch.float64)
        self.n = torch.zeros(size, dtype=torch.float64)
        # coordinates updated since the last delta was taken (models/base.py, delta_bytes)
        self.dirty = torch.zeros(size, dtype=torch.bool)
        self.unique = BatchUnique(size)

    def _weight(self, z: torch.Tensor, sqrt_n: torch.Tensor) -> torch.Tensor:
        c = self.config
        w = (torch.sign(z) * c.l1 - z) / ((c.beta + sqrt_n) / c.alpha + c.l2)
        return torch.where(z.abs() <= c.l1, 0.0, w)

    def weights(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        z = self.z.index_select(0, flat)
        return self._weight(z, torch.sqrt(self.n.index_select(0, flat))).view(ids.shape)

    def gather(self, ids: torch.Tensor) -> CoordinateState:
        """The state and weights of the *distinct* coordinates ``ids`` (1-D)."""
        z, n = self.z.index_select(0, ids), self.n.index_select(0, ids)
        sqrt_n = torch.sqrt(n)
        return CoordinateState(ids, z, n, sqrt_n, self._weight(z, sqrt_n))

    def apply(self, state: CoordinateState, grads: torch.Tensor) -> None:
        """Step the gathered coordinates by their gradients (one per distinct coordinate)."""
        grads = grads.to(torch.float64)
        n = state.n + grads * grads
        sigma = (torch.sqrt(n) - state.sqrt_n) / self.config.alpha
        self.z.index_copy_(0, state.ids, state.z + grads - sigma * state.w)
        self.n.index_copy_(0, state.ids, n)
        self.dirty.index_fill_(0, state.ids, True)

    def update(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """Apply per-coordinate gradients ``grads`` to the *unique* coordinates ``ids``."""
        self.apply(self.gather(ids), grads)

    def step(self, ids: torch.Tensor, example_grads: torch.Tensor) -> None:
        """Sum the per-example gradients over every occurrence of each id in ``ids`` (B, K); update."""
        unique, inverse = self.unique(ids)
        self.step_unique(unique, inverse, example_grads)

    def step_unique(self, unique: torch.Tensor, inverse: torch.Tensor, example_grads: torch.Tensor) -> None:
        """As :meth:`step`, with the distinct ids and inverse (:class:`BatchUnique`) already computed."""
        self.apply(self.gather(unique), self.summed(unique.shape[0], inverse, example_grads))

    @staticmethod
    def summed(distinct: int, inverse: torch.Tensor, example_grads: torch.Tensor) -> torch.Tensor:
        """Each distinct coordinate's gradient: the per-example gradients (B,) summed over its
        occurrences in ``inverse`` (B, K)."""
        per_occurrence = example_grads.to(torch.float64).unsqueeze(1).expand(inverse.shape)
        out = torch.zeros(distinct, dtype=torch.float64)
        return out.index_add_(0, inverse.reshape(-1), per_occurrence.reshape(-1))

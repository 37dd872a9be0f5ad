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
held at its value before the batch. With batch size 1 this is exactly Algorithm 1, which
:meth:`FTRLProximal.learn_examples` runs on a whole batch (a compiled loop, models/ftrl_kernels.py).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from streamrec.models.batch_unique import BatchUnique
from streamrec.models.keyed_rows import KeyedRows, TableConfig


@functools.cache
def _kernels() -> ModuleType:
    """models/ftrl_kernels.py, imported on first use (it loads numba)."""
    return importlib.import_module("streamrec.models.ftrl_kernels")


@dataclass(frozen=True)
class FTRLConfig:
    """FTRL-Proximal's per-coordinate learning rate (``alpha``, ``beta``) and its L1/L2 regularisation."""

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 1.0
    l2: float = 1.0
    # step after every example (Algorithm 1, a compiled loop: :meth:`FTRLProximal.learn_examples`);
    # False: once per mini-batch, on the batch's summed gradients
    per_example: bool = True
    # crosses ("A:B") and count features ("count:KEY") of the spec this part does not read: the
    # online search (models/online_search.py) keeps every candidate in one spec and switches them
    ignored: tuple[str, ...] = ()


@dataclass
class CoordinateState:
    """The state of a batch's distinct coordinates, read once for both the forward pass and the
    update (reading ``z`` and ``n`` twice was a third of the wide part's cost)."""

    ids: torch.Tensor
    z: torch.Tensor
    n: torch.Tensor
    sqrt_n: torch.Tensor
    w: torch.Tensor
    # where each occurrence of a (B, K) batch falls among ``ids``; None for a plain update
    inverse: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        """Each example's sum of weights (B,), float64."""
        assert self.inverse is not None
        return self.w.index_select(0, self.inverse.reshape(-1)).view(self.inverse.shape).sum(dim=1)


class FTRLProximal:
    """FTRL-Proximal state ``z``, ``n`` per coordinate; see the module docstring. With ``keyed``
    the coordinates' ids are keys and a :class:`KeyedRows` (models/keyed_rows.py) hands out their
    rows; otherwise there are ``size`` coordinates and an id is its row."""

    def __init__(self, size: int, config: FTRLConfig = FTRLConfig(),
                 keyed: tuple[TableConfig, np.ndarray, int, int] | None = None) -> None:
        self.config = config
        self.table: KeyedRows | None = None
        if keyed is not None:
            size = 1024
        # float64: z accumulates millions of small terms over a long stream.
        self.z = torch.zeros(size, dtype=torch.float64)
        self.n = torch.zeros(size, dtype=torch.float64)
        # coordinates updated since the last delta was taken (models/base.py, delta_bytes)
        self.dirty = torch.zeros(size, dtype=torch.bool)
        self._unique = BatchUnique(size)
        if keyed is not None:
            table_config, regions, always_from, max_rows = keyed
            self.table = KeyedRows(table_config, regions, always_from, self, capacity=size, max_rows=max_rows)

    def grow_rows(self, rows: int) -> None:
        extra = rows - self.z.shape[0]
        self.z = torch.cat([self.z, torch.zeros(extra, dtype=torch.float64)])
        self.n = torch.cat([self.n, torch.zeros(extra, dtype=torch.float64)])
        self.dirty = torch.cat([self.dirty, torch.zeros(extra, dtype=torch.bool)])
        self._unique.size = rows

    def rows_loaded(self, rows: int) -> None:
        self.dirty = torch.zeros(rows, dtype=torch.bool)
        self._unique.size = rows

    def reset_rows(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        """A row given to a key, or freed, starts again at z = n = 0 (weight 0)."""
        self.z.index_fill_(0, rows, 0.0)
        self.n.index_fill_(0, rows, 0.0)
        self.dirty.index_fill_(0, rows, True)  # a delta carries the new key (or the eviction)

    def _weight(self, z: torch.Tensor, sqrt_n: torch.Tensor) -> torch.Tensor:
        return self._weight_with(self.config, z, sqrt_n)

    def reconfigure(self, config: FTRLConfig) -> None:
        """Learn with ``config`` from now on, every weight unchanged. ``z`` is rescaled for it: the
        weights are a function of ``z``, ``n`` and the settings, so changing ``alpha``, ``l1`` or
        ``l2`` alone would scale every weight at once (``alpha`` x3 triples them) instead of
        changing how the model learns from here."""
        old, self.config = self.config, config
        if (old.alpha, old.beta, old.l1, old.l2) == (config.alpha, config.beta, config.l1, config.l2):
            return
        touched = torch.nonzero(self.z).squeeze(1)  # z == 0 gives w == 0 under any settings
        z = self.z.index_select(0, touched)
        sqrt_n = torch.sqrt(self.n.index_select(0, touched))
        w = self._weight_with(old, z.clone(), sqrt_n)
        denominator = (sqrt_n + config.beta).div_(config.alpha).add_(config.l2)
        # where w != 0: -(z' - sign(z') l1') / d' = w with sign(z') = sign(z); elsewhere |z| <= l1
        # stays inside [-l1', l1'] by scaling
        scale = config.l1 / old.l1 if old.l1 > 0 else 0.0
        rescaled = torch.where(w != 0, torch.sign(z) * config.l1 - w * denominator, z * scale)
        self.z.index_copy_(0, touched, rescaled)
        self.dirty.index_fill_(0, touched[rescaled != z], True)

    @staticmethod
    def _weight_with(c: FTRLConfig, z: torch.Tensor, sqrt_n: torch.Tensor) -> torch.Tensor:
        # sign(z) l1 - z is z's clamp to [-l1, l1] minus z, and 0 where |z| <= l1; in place and
        # without a mask: 5 ops on fresh tensors instead of 9 (a tenth of lr's step).
        denominator = (sqrt_n + c.beta).div_(c.alpha).add_(c.l2)
        return z.clamp(-c.l1, c.l1).sub_(z).div_(denominator)

    def weights(self, ids: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            ids = self.table.rows(ids)
        flat = ids.reshape(-1)
        z = self.z.index_select(0, flat)
        return self._weight(z, torch.sqrt(self.n.index_select(0, flat))).view(ids.shape)

    def _gather(self, ids: torch.Tensor, inverse: torch.Tensor | None = None) -> CoordinateState:
        z, n = self.z.index_select(0, ids), self.n.index_select(0, ids)
        sqrt_n = torch.sqrt(n)
        return CoordinateState(ids, z, n, sqrt_n, self._weight(z, sqrt_n), inverse)

    def gather(self, ids: torch.Tensor) -> CoordinateState:
        """The state of the coordinates of a (B, K) batch of ids, for :meth:`CoordinateState.logits`
        and then :meth:`step_examples` (a keyed table admits what has earned a row first)."""
        if self.table is not None:
            ids = self.table.learn_rows(ids, ids.shape[0])
        return self._gather(*self._unique(ids))

    def _apply(self, state: CoordinateState, grads: torch.Tensor) -> None:
        grads = grads.to(torch.float64)
        n = state.n + grads * grads
        sigma = torch.sqrt(n).sub_(state.sqrt_n).div_(self.config.alpha)
        self.z.index_copy_(0, state.ids, (state.z + grads).sub_(sigma.mul_(state.w)))
        self.n.index_copy_(0, state.ids, n)
        self.dirty.index_fill_(0, state.ids, True)

    def learn_examples(self, ids: torch.Tensor, labels: torch.Tensor,
                       offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Algorithm 1 one example at a time over a (B, K) batch of ids (a keyed table first
        admits what has earned a row): each example's probability from the weights the examples
        before it left, plus its ``offsets`` (another part's logit, fixed for the batch), (B,) float64."""
        if self.table is not None:
            ids = self.table.learn_rows(ids, ids.shape[0])
        c = self.config
        out = np.empty(ids.shape[0])
        offset = np.zeros(ids.shape[0]) if offsets is None else offsets.numpy().astype(np.float64)
        _kernels().learn_examples(np.ascontiguousarray(ids.numpy()), labels.numpy().astype(np.float64), offset,
                                  self.z.numpy(), self.n.numpy(), self.dirty.numpy(),
                                  c.alpha, c.beta, c.l1, c.l2, out)
        return torch.from_numpy(out)

    def row_weights(self, rows: torch.Tensor) -> torch.Tensor:
        """The weights of distinct table rows (not ids: no keyed lookup), float64."""
        return self._gather(rows).w

    def step_rows(self, rows: torch.Tensor, grads: torch.Tensor) -> None:
        """Step distinct table rows on their summed gradients (a row sharded across processes,
        models/sharded.py, steps here on every process's sum)."""
        self._apply(self._gather(rows), grads)

    def update(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """Apply per-coordinate gradients ``grads`` to the *unique* coordinates ``ids``."""
        if self.table is not None:
            ids = self.table.learn_rows(ids, 0)
        self._apply(self._gather(ids), grads)

    def step(self, ids: torch.Tensor, example_grads: torch.Tensor) -> None:
        """Sum the per-example gradients over every occurrence of each id in ``ids`` (B, K); update."""
        self.step_examples(self.gather(ids), example_grads)

    def step_examples(self, state: CoordinateState, example_grads: torch.Tensor) -> None:
        """As :meth:`step`, on the state :meth:`gather` read for the forward pass: each distinct
        coordinate's gradient is the per-example gradients (B,) summed over its occurrences."""
        assert state.inverse is not None
        per_occurrence = example_grads.to(torch.float64).unsqueeze(1).expand(state.inverse.shape)
        summed = torch.zeros(state.ids.shape[0], dtype=torch.float64)
        summed.index_add_(0, state.inverse.reshape(-1), per_occurrence.reshape(-1))
        self._apply(state, summed)

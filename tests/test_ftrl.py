"""FTRL-Proximal against a plain per-coordinate reference and against river's optimiser."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from streamrec.models.ftrl import FTRLConfig, FTRLProximal
from streamrec.models.lr import LogisticRegressionFTRL, LRConfig
from streamrec.stream.feature_spec import FeatureSpec, FieldSpec
from streamrec.stream.sparse_batch import SparseBatch

CONFIG = FTRLConfig(alpha=0.1, beta=1.0, l1=0.5, l2=0.3)


class ReferenceFTRL:
    """McMahan et al. 2013, Algorithm 1, written out one coordinate at a time."""

    def __init__(self, c: FTRLConfig) -> None:
        self.c, self.z, self.n = c, {}, {}

    def weight(self, i: int) -> float:
        z, n, c = self.z.get(i, 0.0), self.n.get(i, 0.0), self.c
        if abs(z) <= c.l1:
            return 0.0
        return -(z - math.copysign(c.l1, z)) / ((c.beta + math.sqrt(n)) / c.alpha + c.l2)

    def predict(self, ids: list[int]) -> float:
        return 1.0 / (1.0 + math.exp(-sum(self.weight(i) for i in ids)))

    def learn(self, ids: list[int], y: int) -> float:
        p = self.predict(ids)
        for i in ids:
            g = p - y
            w = self.weight(i)
            n = self.n.get(i, 0.0)
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / self.c.alpha
            self.z[i] = self.z.get(i, 0.0) + g - sigma * w
            self.n[i] = n + g * g
        return p


def _stream(seed: int, rows: int = 400) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    true_w = [rng.gauss(0, 1) for _ in range(30)]
    out = []
    for _ in range(rows):
        ids = [rng.randrange(0, 10), rng.randrange(10, 20), rng.randrange(20, 30)]
        p = 1 / (1 + math.exp(-sum(true_w[i] for i in ids)))
        out.append((ids, int(rng.random() < p)))
    return out


def _spec() -> FeatureSpec:
    return FeatureSpec((FieldSpec("a", "cat", 10), FieldSpec("b", "cat", 10), FieldSpec("c", "cat", 10)),
                       dense_numeric=False)


def test_lr_matches_reference_algorithm_one_example_at_a_time() -> None:
    spec = _spec()
    model = LogisticRegressionFTRL(spec, LRConfig(ftrl=CONFIG))
    reference = ReferenceFTRL(CONFIG)
    for ids, y in _stream(1):
        batch = SparseBatch(torch.tensor([ids]), torch.empty((1, 0), dtype=torch.int64), torch.empty((1, 0)),
                            torch.tensor([float(y)]))
        ours = float(model.learn(batch)[0])
        theirs = reference.learn([*ids, spec.bias_id], y)
        assert ours == pytest.approx(theirs, abs=1e-12)
    for i in range(spec.wide_rows):
        assert float(model.wide.weights(torch.tensor([i]))[0]) == pytest.approx(reference.weight(i), abs=1e-12)


@pytest.mark.parametrize("batch_size", [7, 64])
def test_lr_learns_one_example_at_a_time_inside_a_batch_as_algorithm_one_does(batch_size: int) -> None:
    spec = _spec()
    model = LogisticRegressionFTRL(spec, LRConfig(ftrl=CONFIG))  # per_example: the default
    batched = LogisticRegressionFTRL(spec, LRConfig(ftrl=dataclasses.replace(CONFIG, per_example=False)))
    reference = ReferenceFTRL(CONFIG)
    stream = list(_stream(1))
    ours, steps = [], []
    for at in range(0, len(stream), batch_size):
        chunk = stream[at:at + batch_size]
        batch = SparseBatch(torch.tensor([ids for ids, _ in chunk]), torch.empty((len(chunk), 0), dtype=torch.int64),
                            torch.empty((len(chunk), 0)), torch.tensor([float(y) for _, y in chunk]))
        ours += model.learn(batch).tolist()
        steps += batched.learn(batch).tolist()
    theirs = [reference.learn([*ids, spec.bias_id], y) for ids, y in stream]
    assert ours == pytest.approx(theirs, abs=1e-12)  # each example predicted after the ones before it
    assert steps != pytest.approx(theirs, abs=1e-6)  # one step per batch predicts from the batch's start
    for i in range(spec.wide_rows):
        assert float(model.wide.weights(torch.tensor([i]))[0]) == pytest.approx(reference.weight(i), abs=1e-12)
    assert bool(model.wide.dirty[spec.bias_id])  # what it stepped goes into the next delta


def test_optimizer_matches_river_ftrl_proximal() -> None:
    """Same gradient sequence into river's FTRLProximal and ours: same z, n and weights.

    With l1 = 0: river only rewrites w_i when |z_i| > l1, so once a coordinate's |z_i| falls
    back under l1 river keeps using its stale non-zero weight, where Algorithm 1 (and we) use 0.
    """
    from river import optim

    config = FTRLConfig(alpha=CONFIG.alpha, beta=CONFIG.beta, l1=0.0, l2=CONFIG.l2)
    river_opt = optim.FTRLProximal(alpha=config.alpha, beta=config.beta, l1=config.l1, l2=config.l2)
    ours = FTRLProximal(30, config)
    river_w: dict[int, float] = {}
    rng = random.Random(7)
    for _ in range(300):
        ids = sorted(rng.sample(range(30), 4))
        grads = {i: rng.gauss(0, 1) for i in ids}
        river_w = river_opt.step(river_w, grads)
        ours.update(torch.tensor(ids), torch.tensor([grads[i] for i in ids], dtype=torch.float64))
    for i in range(30):
        assert float(ours.z[i]) == pytest.approx(river_opt.z[i], abs=1e-9)
        assert float(ours.n[i]) == pytest.approx(river_opt.n[i], abs=1e-9)
    # river stores w as computed *before* each coordinate's latest update; advance it once more
    # with zero gradients to compare the weights both would use next.
    river_w = river_opt.step(river_w, {i: 0.0 for i in range(30)})
    for i in range(30):
        assert float(ours.weights(torch.tensor([i]))[0]) == pytest.approx(river_w[i], abs=1e-9)


def test_batch_step_sums_gradients_of_repeated_coordinates() -> None:
    a, b = FTRLProximal(5, CONFIG), FTRLProximal(5, CONFIG)
    a.step(torch.tensor([[1, 2], [1, 3]]), torch.tensor([0.5, -0.25], dtype=torch.float64))
    b.update(torch.tensor([1, 2, 3]), torch.tensor([0.25, 0.5, -0.25], dtype=torch.float64))
    assert torch.equal(a.z, b.z) and torch.equal(a.n, b.n)


def test_l1_keeps_weights_exactly_zero() -> None:
    ftrl = FTRLProximal(3, FTRLConfig(alpha=0.1, l1=10.0))
    ftrl.update(torch.tensor([0, 1]), torch.tensor([0.9, -0.9], dtype=torch.float64))
    assert torch.count_nonzero(ftrl.weights(torch.arange(3))) == 0

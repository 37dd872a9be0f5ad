"""Wide&Deep gradients: finite differences, one-vs-batch equivalence, and the regulariser's locality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamrec.models.embedding import EmbeddingConfig, SparseEmbedding
from streamrec.models.wide_deep import WideDeep, WideDeepConfig
from streamrec.stream.feature_spec import FeatureSpec, FieldSpec
from streamrec.stream.sparse_batch import SparseBatch


def _model() -> tuple[WideDeep, SparseBatch]:
    spec = FeatureSpec((FieldSpec("user_id", "cat", 16), FieldSpec("item_id", "cat", 16), FieldSpec("x", "num", 8)),
                       dense_numeric=True)
    model = WideDeep(spec, WideDeepConfig(hidden=(8,), embedding=EmbeddingConfig(dim=3, init_std=0.3), seed=1))
    model.wide.z.normal_(0, 2.0, generator=torch.Generator().manual_seed(3))  # non-zero wide weights
    model.wide.n.fill_(4.0)
    ids = torch.tensor([[1, 17, 33], [2, 17, 34], [1, 20, 33], [5, 21, 39]])
    batch = SparseBatch(ids, torch.empty((4, 0), dtype=torch.int64), torch.tensor([[0.5], [1.0], [0.0], [2.0]]),
                        torch.tensor([1.0, 0.0, 0.0, 1.0]))
    return model, batch


def _mean_loss(model: WideDeep, batch: SparseBatch) -> float:
    """The mean logloss, recomputed in float64 from the model's current weights."""
    bias = torch.full((len(batch), 1), model.spec.bias_id)
    wide = model.wide.weights(torch.cat([batch.ids, batch.cross_ids, bias], dim=1)).sum(dim=1)
    rows = model.embedding.weight[batch.ids].reshape(len(batch), -1)
    with torch.no_grad():
        logit = wide + model.deep(torch.cat([rows, batch.dense], dim=1)).squeeze(1)
    p = torch.sigmoid(logit)
    y = batch.labels.to(torch.float64)
    return float(-(y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean())


def test_embedding_and_mlp_gradients_match_finite_differences() -> None:
    torch.set_default_dtype(torch.float64)
    try:
        model, batch = _model()
        model.embedding.weight = model.embedding.weight.double()
        model.deep.double()
        batch.dense = batch.dense.double()
        step = model.backward(batch)
        eps = 1e-6
        for k, row in enumerate(step.e_unique.tolist()):
            for d in range(3):
                original = float(model.embedding.weight[row, d])
                model.embedding.weight[row, d] = original + eps
                up = _mean_loss(model, batch)
                model.embedding.weight[row, d] = original - eps
                down = _mean_loss(model, batch)
                model.embedding.weight[row, d] = original
                assert float(step.leaf.grad[k, d]) == pytest.approx((up - down) / (2 * eps), abs=1e-7)
        weight = model.deep[0].weight
        with torch.no_grad():
            for index in [(0, 0), (3, 5), (7, 9)]:
                original = float(weight[index])
                weight[index] = original + eps
                up = _mean_loss(model, batch)
                weight[index] = original - eps
                down = _mean_loss(model, batch)
                weight[index] = original
                assert float(weight.grad[index]) == pytest.approx((up - down) / (2 * eps), abs=1e-7)
    finally:
        torch.set_default_dtype(torch.float32)


def test_wide_residual_is_the_logit_gradient() -> None:
    """d(sum logloss)/d(w_i) summed over occurrences equals what FTRL receives."""
    model, batch = _model()
    step = model.backward(batch)
    p = torch.sigmoid(model.logits(batch).to(torch.float64))
    assert torch.allclose(step.residual, p - batch.labels.to(torch.float64), atol=1e-6)


def test_batch_gradient_is_the_mean_of_single_example_gradients() -> None:
    model, batch = _model()
    full = model.backward(batch)
    full_grad = {row: full.leaf.grad[k].clone() for k, row in enumerate(full.e_unique.tolist())}
    model.deep.zero_grad()
    summed: dict[int, torch.Tensor] = {}
    for i in range(len(batch)):
        single = SparseBatch(batch.ids[i:i + 1], batch.cross_ids[i:i + 1], batch.dense[i:i + 1], batch.labels[i:i + 1])
        step = model.backward(single)
        for k, row in enumerate(step.e_unique.tolist()):
            summed[row] = summed.get(row, torch.zeros(3)) + step.leaf.grad[k] / len(batch)
        model.deep.zero_grad()
    assert summed.keys() == full_grad.keys()
    for row, grad in full_grad.items():
        assert torch.allclose(grad, summed[row], atol=1e-7)


def test_rows_absent_from_a_batch_are_untouched() -> None:
    model, batch = _model()
    before = {k: v.clone() for k, v in model.tensors().items() if k.startswith(("embedding", "wide"))}
    model.learn(batch)
    touched_rows = set(batch.ids.reshape(-1).tolist())
    untouched = torch.tensor([r for r in range(model.spec.field_rows) if r not in touched_rows])
    for name in ("embedding.weight", "embedding.accum", "embedding.counts"):
        after = model.tensors()[name]
        assert torch.equal(after[untouched], before[name][untouched]), name
        assert not torch.equal(after[batch.ids[0]], before[name][batch.ids[0]]), f"{name} did not learn"
    wide_untouched = torch.tensor([r for r in range(model.spec.wide_rows - 1) if r not in touched_rows])
    assert torch.equal(model.wide.z[wide_untouched], before["wide.z"][wide_untouched])


def test_mini_batch_aware_l2_scales_by_inverse_frequency() -> None:
    config = EmbeddingConfig(dim=2, lr=0.1, l2=0.5, init_std=1.0, adagrad_init=1.0)
    table = SparseEmbedding(4, config, torch.Generator().manual_seed(0))
    table.counts[:] = torch.tensor([0.0, 9.0, 0.0, 0.0])
    w0 = table.weight.clone()
    unique, inverse, leaf = table.gather(torch.tensor([[1], [1], [3]]))
    leaf.grad = torch.zeros_like(leaf)  # no data gradient: only the regulariser acts
    table.step(unique, inverse, leaf)
    for row, n in ((1, 11.0), (3, 1.0)):  # row 1 seen 9 times before plus 2 now; row 3 once
        g = config.l2 * w0[row] / n
        expected = w0[row] - config.lr * g / np.sqrt(config.adagrad_init + float(g.pow(2).mean()))
        assert torch.allclose(table.weight[row], expected, atol=1e-7)
    assert torch.equal(table.weight[[0, 2]], w0[[0, 2]])
    assert table.counts.tolist() == [0.0, 11.0, 0.0, 1.0]

"""What sets dien, autorec and youtube_dnn apart: AUGRU gating, DIEN's auxiliary loss, AutoRec's
signed item interactions, YouTube DNN's sampled softmax and progressive recall@k."""

from __future__ import annotations

import numpy as np
import orjson
import torch

from streamrec.evaluation import evaluate_rows
from streamrec.models import create_model, model_from_bytes, spec_for
from streamrec.models.dien import AUGRU
from streamrec.models.youtube_dnn import RECALL_K
from streamrec.stream.behaviour_history import BehaviourHistory
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer


def test_augru_keeps_its_state_where_attention_is_zero_and_moves_where_it_is_not():
    augru = AUGRU(4, 4, torch.Generator().manual_seed(0))
    x = torch.randn(1, 2, 4).expand(3, 2, 4)  # one sequence, three attentions on its second step
    first = augru(x[:, :1], torch.ones(3, 1))
    out = augru(x, torch.tensor([[1.0, 0.0], [1.0, 0.5], [1.0, 1.0]]))
    # no attention on step 2: the state after step 1 stays (to float rounding: the input projection
    # of a 1-step and a 2-step sequence may take different matrix kernels)
    torch.testing.assert_close(out[0], first[0], rtol=0, atol=1e-6)
    moved = (out - first).abs().sum(dim=1)
    assert 0 < moved[1] < moved[2]


def _spec(name: str, rows):
    return spec_for(name, SpecOptions().infer([r.features for r in rows[:500]]))


def test_dien_learns_from_its_auxiliary_loss_and_reads_the_history(learnable_rows):
    rows = learnable_rows[:600]
    spec = _spec("dien", rows)
    featurizer = Featurizer(spec)
    clicked = [r.item_id for r in learnable_rows if r.label][:15]
    users, items, feats = [r.user_id for r in rows[:4]], [r.item_id for r in rows[:4]], [r.features for r in rows[:4]]
    batch = featurizer.build(users, items, feats, [1, 0, 1, 0], histories=[clicked, clicked[:3], [], clicked])
    with_aux, without = create_model("dien", spec), create_model("dien", spec, settings={"auxiliary_weight": "0"})
    with_aux.learn(batch)
    without.learn(batch)
    gru = "deep.extractor.weight_hh_l0"
    # the GRU's weights get the next-click loss's gradient only with the auxiliary loss on
    assert not torch.equal(with_aux.tensors()[gru], without.tensors()[gru])
    p = with_aux.predict_proba(featurizer.build(users[:2], items[:1] * 2, feats[:1] * 2, histories=[clicked, []]))
    assert p[0] != p[1]
    loaded = model_from_bytes(with_aux.to_bytes())
    np.testing.assert_array_equal(loaded.predict_proba(batch), with_aux.predict_proba(batch))


def test_autorec_reads_the_items_signed_interactions(learnable_rows):
    rows = learnable_rows[:600]
    spec = _spec("autorec", rows)
    assert spec.history_kind == "item_interactions"
    history = BehaviourHistory(spec.history_kind, spec.history_length)
    history.after(["u1", "u2", "u3"], ["i1", "i1", "i2"], [1, 0, 1])
    assert history.before(["x", "y", "z"], ["i1", "i2", "i3"]) == [["u1", "~u2"], ["u3"], []]
    again = BehaviourHistory.from_state(orjson.loads(orjson.dumps(history.state())))
    assert again.kind == "item_interactions" and again.before(["x"], ["i1"]) == [["u1", "~u2"]]
    featurizer = Featurizer(spec)
    batch = featurizer.build(["u1", "u2"], ["i1", "i1"], [rows[0].features] * 2,
                             histories=[["u1", "~u2"], ["u1", "u2"]])
    user_rows = batch.ids[:, 0].tolist()  # the users' own rows: history entries hash to them
    assert batch.history[0, :2].tolist() == [user_rows[0], -user_rows[1] - 2]
    assert batch.history[1, :2].tolist() == user_rows
    model = create_model("autorec", spec)
    report, model = evaluate_rows(rows, "autorec", batch_size=100)
    assert report["examples"] == len(rows)
    same_user = featurizer.build(["u1"] * 3, ["i1"] * 3, [rows[0].features] * 3,
                                 histories=[["u2", "u3"], ["~u2", "~u3"], []])
    p = model.predict_proba(same_user)
    assert len({p[0], p[1], p[2]}) == 3  # clicked, skipped and unseen items score differently


def test_youtube_dnn_reports_progressive_recall_and_learns_from_its_sampled_softmax(learnable_rows):
    rows = learnable_rows[:3000]
    report, model = evaluate_rows(rows, "youtube_dnn", batch_size=200)
    clicks = sum(r.label for r in rows)
    assert report["recall_clicks"] == clicks
    assert 0 < report[f"recall_at_{RECALL_K}"] < 1
    assert model.recall_hits == round(report[f"recall_at_{RECALL_K}"] * clicks)
    spec = model.spec
    featurizer = Featurizer(spec)
    chunk = rows[:200]
    batch = featurizer.build([r.user_id for r in chunk], [r.item_id for r in chunk], [r.features for r in chunk],
                             [r.label for r in chunk])
    with_softmax = create_model("youtube_dnn", spec, settings={"softmax_weight": "1"})
    plain = create_model("youtube_dnn", spec, settings={"softmax_weight": "0"})
    with_softmax.learn(batch)
    plain.learn(batch)
    tower = "deep.tower.0.weight"
    assert not torch.equal(with_softmax.tensors()[tower], plain.tensors()[tower])


def test_youtube_dnn_recall_counts_a_hit_exactly_when_the_click_ranks_in_the_top_k(learnable_rows):
    rows = learnable_rows[:500]
    # fixed hashing: the test swaps rows of the embedding by id
    spec = spec_for("youtube_dnn", SpecOptions(keyed=False).infer([r.features for r in rows]))
    model = create_model("youtube_dnn", spec)
    featurizer = Featurizer(spec)
    catalogue = [f"item-{k}" for k in range(30)]
    seen = featurizer.build(["u"] * 30, catalogue, [rows[0].features] * 30, [0] * 30)
    model.learn(seen)  # the 30 items are now in the catalogue
    click = featurizer.build(["u"], [catalogue[0]], [rows[0].features], [1])
    with torch.no_grad():
        history, mask, _sign = model._history(click)
        user = model.deep.user_vectors(model.embedding.weight[click.ids], click.dense,
                                       model.embedding.weight[history].sum(dim=2) * mask.unsqueeze(-1), mask)[0]
        item_rows = seen.ids[:, 1]
        order = torch.argsort(model.embedding.weight[item_rows] @ user, descending=True)
        # put the clicked item just inside, then just outside, the top k by the user's scores
        for position, hit in ((RECALL_K - 1, 1), (RECALL_K, 0)):
            target = item_rows[order[position]]
            model.embedding.weight[click.ids[0, 1]], model.embedding.weight[target] = (
                model.embedding.weight[target].clone(), model.embedding.weight[click.ids[0, 1]].clone())
            before = model.recall_hits
            with torch.enable_grad():
                model.backward(click)  # the learning forward pass, without a step, counts the click
            assert model.recall_hits - before == hit, position
            model.embedding.weight[click.ids[0, 1]], model.embedding.weight[target] = (
                model.embedding.weight[target].clone(), model.embedding.weight[click.ids[0, 1]].clone())

"""The model contract over every registered model: learning, safetensors round trip, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.evaluation import batched, evaluate_rows
from streamrec.models import REGISTRY, PristineModels, create_model, has_wide_part, model_from_bytes
from streamrec.models.base import load_tensors_blob, read_delta
from streamrec.models.progressive import progressive_step
from streamrec.producers.generator import generate, write_stream
from streamrec.producers.readers import ReaderOptions, read_rows
from streamrec.stream.errors import ModelError
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer
from streamrec.stream.quality_metrics import StreamingMetrics

MODELS = sorted(REGISTRY)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, float]:
    path = tmp_path_factory.mktemp("data") / "s.tsv"
    summary = write_stream(generate(40_000, seed=11), path, seed=11)
    rows = list(read_rows(path, "criteo", ReaderOptions(user_field="C1", item_field="C2")))
    return rows, float(summary["oracle_auc"])


def _item_rate_auc(rows: list, window: int) -> float:
    """AUC over the last ``window`` rows of each item's click rate over its previous 50
    impressions: about the most that ids alone tell on this stream."""
    from collections import defaultdict, deque

    from streamrec.stream.quality_metrics import exact_auc

    seen: dict[str, deque] = defaultdict(lambda: deque(maxlen=50))
    scores = []
    for row in rows:
        past = seen[row.item_id]
        scores.append((sum(past) + 0.22 * 5) / (len(past) + 5))
        past.append(row.label)
    return exact_auc(np.array(scores[-window:]), np.array([r.label for r in rows[-window:]]))


@pytest.mark.parametrize("name", MODELS)
def test_learns_a_set_fraction_of_the_oracle(name: str, learnable: tuple[list, float]) -> None:
    rows, oracle = learnable
    report, model = evaluate_rows(rows, name, batch_size=256, window=5000)
    assert report["examples"] == len(rows)
    # every model beats the base rate and is calibrated after one pass of 40k rows
    assert report["normalized_entropy_window"] < (0.99 if model.reads_context else 1.0), report
    assert 0.8 < report["calibration"] < 1.2, report
    if model.reads_context:  # the stream's signal is mostly in its context fields
        assert report["auc_window"] >= 0.5 + 0.4 * (oracle - 0.5), report
    else:  # pure collaborative filtering reads ids only: held to what ids can tell (~0.58 here)
        assert report["auc_window"] >= 0.5 + 0.5 * (_item_rate_auc(rows, 5000) - 0.5), report
    if getattr(model, "wide", None) is not None:  # FTRL learns from the first examples on
        assert report["auc"] >= 0.5 + 0.3 * (oracle - 0.5), report


def _batches(featurizer: Featurizer, rows: list, size: int) -> list:
    """Labelled batches of ``size`` rows, in order."""
    return [featurizer.build([r.user_id for r in c], [r.item_id for r in c], [r.features for r in c],
                             [r.label for r in c]) for c in batched(rows, size)]


@pytest.fixture(scope="module")
def small_batches(learnable: tuple[list, float]):
    rows = learnable[0][:1200]
    spec = SpecOptions(crosses=(("C5", "C6"),)).infer([r.features for r in rows[:500]])
    featurizer = Featurizer(spec)
    batches = _batches(featurizer, rows, 300)
    unseen = featurizer.build(["never-seen-user"] * 3, ["never-seen-item"] * 3,
                              [{**rows[0].features, "C3": "never-seen-value"}] * 3)
    return spec, batches, unseen


@pytest.mark.parametrize("name", MODELS)
def test_contract_shapes_seeds_unseen_ids_and_untouched_inputs(name: str, small_batches) -> None:
    spec, batches, unseen = small_batches
    if not has_wide_part(name):  # it refuses crosses; the batches still carry cross ids, untouched
        spec = dataclasses.replace(spec, crosses=())
    first, second = create_model(name, spec, seed=7), create_model(name, spec, seed=7)
    before = [(b.ids.clone(), b.cross_ids.clone(), b.dense.clone(), b.labels.clone()) for b in batches]
    for batch in batches:
        p = first.learn(batch)
        assert p.shape == (len(batch),) and np.all((p > 0) & (p < 1))
        np.testing.assert_array_equal(second.learn(batch), p)  # seeded runs repeat bit for bit
    for batch, (ids, cross, dense, labels) in zip(batches, before):
        assert torch.equal(batch.ids, ids) and torch.equal(batch.cross_ids, cross)
        assert torch.equal(batch.dense, dense) and torch.equal(batch.labels, labels)
    scored = first.predict_proba(unseen)
    assert scored.shape == (3,) and np.all(np.isfinite(scored)) and np.all((scored > 0) & (scored < 1))
    if hasattr(first, "embedding"):  # rows start from the seed (keyed: when their key is admitted)
        assert not np.array_equal(create_model(name, spec, seed=8).learn(batches[0]),
                                  create_model(name, spec, seed=7).learn(batches[0]))


def _wide_options(name: str, keyed: bool = True) -> SpecOptions:
    """A cross and count features of a field and of the cross for every model that takes them
    (models without a wide part refuse them): their state must round-trip and travel in deltas."""
    if not has_wide_part(name):
        return SpecOptions(keyed=keyed)
    return SpecOptions(crosses=(("C5", "C6"),), counts=("C3", "C5:C6"), count_rows=1 << 12, keyed=keyed)


@pytest.mark.parametrize("name,keyed", [(name, True) for name in MODELS] + [("lr", False), ("wide_deep", False)])
def test_safetensors_round_trip_gives_identical_predictions(name: str, keyed: bool,
                                                            learnable: tuple[list, float]) -> None:
    rows = learnable[0][:3000]
    spec = _wide_options(name, keyed).infer([r.features for r in rows[:500]])
    model = create_model(name, spec, seed=3)
    featurizer = Featurizer(spec)
    metrics = StreamingMetrics(100)
    batches = _batches(featurizer, rows, 500)
    for batch in batches[:-1]:
        progressive_step(model, metrics, batch)
    blob = model.to_bytes({"note": "test"})
    assert b"pickle" not in blob[:200]
    dense_bytes = sum(t.numel() * t.element_size() for t in model.tensors().values())
    if not keyed:  # only touched rows of the hashed tables are written
        assert len(blob) < dense_bytes / 5
    loaded = model_from_bytes(blob)
    assert type(loaded) is type(model) and loaded.spec == model.spec and loaded.config == model.config
    np.testing.assert_array_equal(loaded.predict_proba(batches[-1]), model.predict_proba(batches[-1]))
    # Optimiser state travels too: both keep learning identically.
    np.testing.assert_array_equal(loaded.learn(batches[-1]), model.learn(batches[-1]))
    np.testing.assert_array_equal(loaded.predict_proba(batches[0]), model.predict_proba(batches[0]))


@pytest.mark.parametrize("name", MODELS)
def test_loading_through_kept_fresh_models_is_exact_and_leaves_them_fresh(name: str,
                                                                        learnable: tuple[list, float]) -> None:
    """A scorer copies a kept fresh model instead of drawing the seeded rows again; each version
    loaded that way must equal one built from scratch, also after another version was loaded."""
    rows = learnable[0][:2000]
    spec = _wide_options(name).infer([r.features for r in rows[:500]])
    model = create_model(name, spec, seed=4)
    featurizer = Featurizer(spec)
    batches = _batches(featurizer, rows, 500)
    blobs = []
    for batch in batches[:-1]:
        model.learn(batch)
        blobs.append(model.to_bytes())
    pristine = PristineModels(keep=1)
    for blob in blobs + blobs[:1]:  # the first again, after later versions touched more rows
        kept, scratch = model_from_bytes(blob, pristine), model_from_bytes(blob)
        kept_tensors, scratch_tensors = kept.tensors(), scratch.tensors()
        assert kept_tensors.keys() == scratch_tensors.keys()
        for key, value in scratch_tensors.items():
            assert torch.equal(kept_tensors[key], value), key
        np.testing.assert_array_equal(kept.learn(batches[-1]), scratch.learn(batches[-1]))


@pytest.mark.parametrize("name", MODELS)
def test_deltas_applied_in_order_give_the_trainers_predictions(name: str, learnable: tuple[list, float]) -> None:
    rows = learnable[0][:4000]
    spec = _wide_options(name).infer([r.features for r in rows[:500]])
    trainer = create_model(name, spec, seed=5)
    featurizer = Featurizer(spec)
    batches = _batches(featurizer, rows, 250)
    probe = batches[-1]
    trainer.learn(batches[0])
    trainer.delta_bytes(include_dense=True)  # the version below holds everything up to here
    scorer = model_from_bytes(trainer.to_bytes())
    for step, batch in enumerate(batches[1:-1], start=1):
        trainer.learn(batch)
        if step % 3 == 0:
            dense = step % 6 == 0
            delta = trainer.delta_bytes(include_dense=dense)
            scorer.apply_delta(read_delta(delta))
            if dense:
                np.testing.assert_array_equal(scorer.predict_proba(probe), trainer.predict_proba(probe))
            elif name == "lr":  # no dense part: every delta is exact
                np.testing.assert_array_equal(scorer.predict_proba(probe), trainer.predict_proba(probe))
    scorer.apply_delta(read_delta(trainer.delta_bytes(include_dense=True)))
    np.testing.assert_array_equal(scorer.predict_proba(probe), trainer.predict_proba(probe))
    empty = load_tensors_blob(trainer.delta_bytes(include_dense=False))  # nothing learned since
    assert all(v.numel() == 0 for v in empty.values()), {k: v.shape for k, v in empty.items()}
    # a delta skipped is a gap: the state is then no longer the trainer's
    trainer.learn(batches[1])
    trainer.delta_bytes(include_dense=True)
    trainer.learn(batches[2])
    scorer.apply_delta(read_delta(trainer.delta_bytes(include_dense=True)))
    assert not np.array_equal(scorer.predict_proba(batches[1]), trainer.predict_proba(batches[1]))
    with pytest.raises(ModelError, match="not streamrec delta"):
        scorer.apply_delta(read_delta(trainer.to_bytes()))


def test_all_finite_sees_a_nan_weight(learnable: tuple[list, float]) -> None:
    rows = learnable[0][:500]
    spec = SpecOptions().infer([r.features for r in rows])
    model = create_model("wide_deep", spec)
    assert model.all_finite()
    model.tensors()["deep.0.weight"][0, 0] = float("nan")
    assert not model.all_finite()


@pytest.mark.parametrize("name", MODELS)
def test_seeded_runs_reproduce_and_inputs_stay_untouched(name: str, learnable: tuple[list, float]) -> None:
    rows = learnable[0][:2000]
    features_before = json.dumps([r.features for r in rows], sort_keys=True)
    first, _ = evaluate_rows(rows, name, batch_size=128, seed=5)
    second, _ = evaluate_rows(rows, name, batch_size=128, seed=5)
    for key in ("auc", "logloss", "calibration"):
        assert first[key] == second[key]
    assert json.dumps([r.features for r in rows], sort_keys=True) == features_before


def test_unknown_model_and_corrupt_weights_are_model_errors(learnable: tuple[list, float]) -> None:
    spec = SpecOptions().infer([r.features for r in learnable[0][:10]])
    with pytest.raises(ModelError, match="unknown model 'gbdt'"):
        create_model("gbdt", spec)
    blob = create_model("lr", spec).to_bytes()
    with pytest.raises(ModelError):
        model_from_bytes(blob[:100])
    with pytest.raises(ModelError, match="not streamrec weights"):
        import torch
        from safetensors.torch import save

        model_from_bytes(save({"x": torch.zeros(1)}))


def test_evaluate_cli_writes_the_report(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from streamrec.cli import cli

    data = tmp_path / "s.tsv"
    write_stream(generate(3000, seed=2), data, seed=2)
    report_path = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["evaluate", str(data), "--format", "criteo", "--model", "lr",
                                      "--user-field", "C1", "--item-field", "C2", "--limit", "2000",
                                      "--batch-size", "100", "--report-json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert set(report) >= {"examples", "auc", "auc_window", "logloss", "normalized_entropy", "calibration",
                           "examples_per_second", "wall_seconds", "model"}
    assert report["examples"] == 2000 and report["model"] == "lr"


def test_model_settings_are_applied_by_dotted_key_and_bad_ones_named() -> None:
    from streamrec.models import apply_settings, parse_settings
    from streamrec.models.wide_deep import WideDeepConfig
    from streamrec.stream.errors import ConfigError

    config = apply_settings(WideDeepConfig(), parse_settings(["ftrl.alpha=0.5", "hidden=64,32", "embedding.dim=4"]))
    assert config.ftrl.alpha == 0.5 and config.ftrl.beta == WideDeepConfig().ftrl.beta
    assert config.hidden == (64, 32) and config.embedding.dim == 4
    with pytest.raises(ConfigError, match="ftrl.alhpa.*known: ftrl.alpha"):
        apply_settings(WideDeepConfig(), {"ftrl.alhpa": "1"}, "wide_deep")
    with pytest.raises(ConfigError, match="expected float"):
        apply_settings(WideDeepConfig(), {"dense_lr": "fast"})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_settings(["dense_lr"])
    spec = SpecOptions().infer([{"C3": "a"}])
    model = create_model("wide_deep", spec, settings={"hidden": "16", "embedding.dim": "4"})
    assert model.config.hidden == (16,) and model.embedding.weight.shape[1] == 4


def test_a_model_without_a_wide_part_refuses_ftrl_settings_and_crosses() -> None:
    from streamrec.stream.errors import ConfigError

    crossed = SpecOptions(crosses=(("user_id", "C3"),)).infer([{"C3": "a"}])
    with pytest.raises(ConfigError, match=r"--set ftrl.alpha: din has no wide \(FTRL\) part; models with one: .*wide_deep"):
        create_model("din", SpecOptions().infer([{"C3": "a"}]), settings={"ftrl.alpha": "0.5"})
    with pytest.raises(ConfigError, match="--cross user_id:C3: dcn has no wide part"):
        create_model("dcn", crossed)
    with pytest.raises(ConfigError, match="has no such setting; known: embedding.dim") as bad:
        create_model("dcn", SpecOptions().infer([{"C3": "a"}]), settings={"embeding.dim": "4"})
    assert "ftrl" not in str(bad.value)
    assert create_model("deepfm", crossed, settings={"ftrl.alpha": "0.5"}).config.ftrl.alpha == 0.5

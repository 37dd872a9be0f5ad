"""One model learned by several ranks of a gloo process group (models/sharded.py) learns what one
process learns from the same global batches: the same predictions and the same tables."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from streamrec.models import create_model, spec_for
from streamrec.models.sharded import ShardedModel, shard_rows
from streamrec.producers.generator import generate, write_stream
from streamrec.producers.readers import ReaderOptions, read_rows
from streamrec.sharded_evaluation import SPEC_SAMPLE_ROWS, ShardedRun, evaluate_sharded, sharded_settings
from streamrec.stream.errors import ConfigError, ModelError
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer

READER = ReaderOptions(user_field="C1", item_field="C2")
ROWS, BATCH = 3000, 256


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sharded") / "s.tsv"
    write_stream(generate(ROWS, seed=5), path, seed=5)
    return path


def _one_process(path: Path, name: str, keyed: bool = False, settings: dict[str, str] | None = None,
                 counts: tuple[str, ...] = (), crosses: tuple[tuple[str, str], ...] = ()
                 ) -> tuple[np.ndarray, dict[str, torch.Tensor], object]:
    """The same model learned by one process, one step per global batch."""
    rows = list(read_rows(path, "criteo", READER))
    spec = spec_for(name, SpecOptions(keyed=keyed, counts=counts, crosses=crosses)
                    .infer([r.features for r in rows[:SPEC_SAMPLE_ROWS]]))
    model = create_model(name, spec, settings=sharded_settings(name, settings or {}))
    featurizer = Featurizer(spec)
    predictions = []
    for at in range(0, len(rows), BATCH):
        chunk = rows[at:at + BATCH]
        batch = featurizer.build([r.user_id for r in chunk], [r.item_id for r in chunk], [r.features for r in chunk],
                                 [r.label for r in chunk])
        predictions.append(model.learn(batch))
    return np.concatenate(predictions), model.tensors(), model


@pytest.mark.parametrize(("name", "ranks"), [("wide_deep", 2), ("deepfm", 3)])
def test_ranks_learn_what_one_process_learns_from_the_same_global_batches(log: Path, tmp_path: Path, name: str,
                                                                         ranks: int) -> None:
    out = tmp_path / "sharded.safetensors"
    report = evaluate_sharded(ShardedRun(str(log), "criteo", name, ranks, batch_size=BATCH, reader=READER,
                                         tables="hashed", tensors_out=str(out), timeout_s=120))
    expected, tensors, _model = _one_process(log, name)
    assert report["examples"] == ROWS and report["ranks"] == ranks
    # every prediction was made before its batch's step, from the same weights up to summation order
    np.testing.assert_allclose(report["predictions"], expected, rtol=0, atol=2e-5)
    sharded = load_file(str(out))
    assert sorted(sharded) == sorted(tensors)
    for key, value in tensors.items():
        assert sharded[key].shape == value.shape, key
        torch.testing.assert_close(sharded[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # the rows the stream touched moved: the comparison is not of two untouched tables
    assert int((tensors["embedding.counts"] > 0).sum()) > 100 and float(tensors["wide.n"].max()) > 1.0
    assert report["bytes_sent_per_example"] > 0


@pytest.mark.parametrize("tables", ["hashed", "keyed"])
def test_count_features_on_ranks_are_one_processs(log: Path, tmp_path: Path, tables: str) -> None:
    """Count features sharded by counted value: each example's levels are what one process counts
    (the global batch's earlier examples included), so ranks predict what one process predicts,
    and the joined model holds one process's counts."""
    counts = ("C3", "C4:C5", "user_id")
    crosses = (("C4", "C5"),)
    out = tmp_path / "counted.safetensors"
    report = evaluate_sharded(ShardedRun(str(log), "criteo", "wide_deep", 2, batch_size=BATCH, reader=READER,
                                         tables=tables, crosses=crosses, counts=counts, tensors_out=str(out),
                                         timeout_s=120))
    expected, _tensors, model = _one_process(log, "wide_deep", keyed=tables == "keyed", counts=counts,
                                             crosses=crosses)
    np.testing.assert_allclose(report["predictions"], expected, rtol=0, atol=2e-5)
    whole = create_model("wide_deep", model.spec, settings=sharded_settings("wide_deep", {}))
    whole.load_tensors(load_file(str(out)))
    ranks_counts, one_counts = whole.seen.counted(), model.seen.counted()
    for theirs, ours in zip(ranks_counts, one_counts):
        np.testing.assert_array_equal(theirs, ours)
    assert one_counts[1].sum() > 0


def test_a_model_written_by_two_ranks_goes_on_learning_on_three(log: Path, tmp_path: Path) -> None:
    """Resharding on resume: the whole model two ranks wrote is split three ways, and the three
    ranks go on as one process would have gone on."""
    half = (ROWS // BATCH // 2) * BATCH
    first = tmp_path / "two.safetensors"
    common = {"batch_size": BATCH, "reader": READER, "timeout_s": 120, "tables": "hashed"}
    report = evaluate_sharded(ShardedRun(str(log), "criteo", "wide_deep", 2, rows=half, tensors_out=str(first),
                                         **common))
    resumed = evaluate_sharded(ShardedRun(str(log), "criteo", "wide_deep", 3, start_row=half, tensors_in=str(first),
                                          tensors_out=str(tmp_path / "three.safetensors"), **common))
    assert report["examples"] == half and resumed["examples"] == ROWS - half
    expected, tensors, _model = _one_process(log, "wide_deep")
    np.testing.assert_allclose(np.concatenate([report["predictions"], resumed["predictions"]]), expected,
                               rtol=0, atol=2e-5)
    final = load_file(str(tmp_path / "three.safetensors"))
    for key in ("embedding.weight", "embedding.accum", "embedding.counts", "wide.z", "wide.n"):
        torch.testing.assert_close(final[key], tensors[key], rtol=1e-4, atol=1e-5, msg=key)


def test_ranks_with_keyed_tables_learn_what_one_process_learns(log: Path) -> None:
    """Keyed tables sharded by key: below the row budget every key has its own row, whose values
    start from the key itself, so ranks predict what one process predicts."""
    report = evaluate_sharded(ShardedRun(str(log), "criteo", "wide_deep", 2, batch_size=BATCH, reader=READER,
                                         timeout_s=120))
    expected, _tensors, _model = _one_process(log, "wide_deep", keyed=True)
    np.testing.assert_allclose(report["predictions"], expected, rtol=0, atol=2e-5)


def test_a_keyed_model_written_by_two_ranks_goes_on_learning_on_three(log: Path, tmp_path: Path) -> None:
    """Keyed tables gathered into one process's layout (rows renumbered) and split by key again:
    three ranks go on as one process would, and the last whole model holds one process's keys,
    with its values and counters."""
    half = (ROWS // BATCH // 2) * BATCH
    first, last = tmp_path / "two.safetensors", tmp_path / "three.safetensors"
    common = {"batch_size": BATCH, "reader": READER, "timeout_s": 120}
    report = evaluate_sharded(ShardedRun(str(log), "criteo", "wide_deep", 2, rows=half, tensors_out=str(first),
                                         **common))
    resumed = evaluate_sharded(ShardedRun(str(log), "criteo", "wide_deep", 3, start_row=half, tensors_in=str(first),
                                          tensors_out=str(last), **common))
    expected, tensors, model = _one_process(log, "wide_deep", keyed=True)
    np.testing.assert_allclose(np.concatenate([report["predictions"], resumed["predictions"]]), expected,
                               rtol=0, atol=2e-5)
    final = load_file(str(last))
    for group, columns in (("embedding", ("embedding.weight", "embedding.accum", "embedding.counts")),
                           ("wide", ("wide.z", "wide.n"))):
        table = model.keyed_tables()[group]
        held = np.flatnonzero(table.keys >= 0)  # rows held by a key of their own
        mine = {int(k): i for i, k in enumerate(final[f"{group}.keys"].tolist()) if k >= 0}
        assert sorted(mine) == sorted(int(k) for k in table.keys[held]), group
        rows = torch.tensor([mine[int(k)] for k in table.keys[held]])
        for name in columns:
            torch.testing.assert_close(final[name].index_select(0, rows), tensors[name].index_select(
                0, torch.from_numpy(held)), rtol=1e-4, atol=1e-5, msg=name)
        clock = final[f"{group}.table.clock"].tolist()
        assert clock[0] == table.clock and clock[3] == table.admitted, (group, clock)


def test_ranks_with_keyed_tables_over_their_budget_stay_close_to_one_process(log: Path) -> None:
    """Past the row budget each rank evicts its own least recently used keys: not one process's
    choices, but as good."""
    settings = {"tables.max_rows": "1024", "tables.admit_when_full": "2"}
    report = evaluate_sharded(ShardedRun(str(log), "criteo", "wide_deep", 2, batch_size=BATCH, reader=READER,
                                         settings=settings, timeout_s=120))
    expected, _tensors, model = _one_process(log, "wide_deep", keyed=True, settings=settings)
    labels = np.array([r.label for r in read_rows(log, "criteo", READER)], dtype=np.float64)
    from streamrec.stream.quality_metrics import exact_auc

    assert model.keyed_tables()["embedding"].evicted > 0
    assert abs(report["auc"] - exact_auc(expected, labels)) < 0.01
    assert not np.allclose(report["predictions"], expected, rtol=0, atol=2e-5)  # the budget did bind


def test_shards_cover_every_row_once() -> None:
    for rows, world in itertools.product((1, 7, 64, 65_537), (1, 2, 3, 8)):
        assert sum(shard_rows(rows, rank, world) for rank in range(world)) == rows


def test_what_cannot_be_sharded_yet_is_refused_by_name(log: Path) -> None:
    rows = list(itertools.islice(read_rows(log, "criteo", READER), 200))
    sample = [r.features for r in rows]
    per_example = create_model("wide_deep", SpecOptions(keyed=False).infer(sample))
    with pytest.raises(ConfigError, match="ftrl.per_example"):
        ShardedModel(per_example)
    sequence = create_model("din", spec_for("din", SpecOptions(keyed=False).infer(sample)),
                            settings=sharded_settings("din", {}))
    with pytest.raises(ConfigError, match="sequence models"):
        ShardedModel(sequence)


def _two_ranks(rank: int, path: str, port: int, keyed: bool) -> tuple[list, ShardedModel, object]:
    """Join a group of two ranks and build its ``wide_deep`` on the log: (the log's rows, the
    sharded model, a function giving this rank's share of a global batch of rows)."""
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    rows = list(read_rows(Path(path), "criteo", READER))
    spec = SpecOptions(keyed=keyed).infer([r.features for r in rows[:SPEC_SAMPLE_ROWS]])
    model = ShardedModel(create_model("wide_deep", spec, settings=sharded_settings("wide_deep", {})))
    featurizer = Featurizer(spec)

    def share(chunk: list) -> object:
        part = chunk[rank * len(chunk) // 2:(rank + 1) * len(chunk) // 2]
        return featurizer.build([r.user_id for r in part], [r.item_id for r in part], [r.features for r in part],
                                [r.label for r in part])

    return rows, model, share


def _predict_rank(rank: int, path: str, port: int, out: str) -> None:
    """Learn a share of every global batch, then score the log's last rows with ``predict``."""
    import torch.distributed as dist

    try:
        rows, model, share = _two_ranks(rank, path, port, keyed=False)
        for at in range(0, len(rows), BATCH):
            model.learn(share(rows[at:at + BATCH]))
        scored = model.predict(share(rows[-500:]))
        np.save(f"{out}.{rank}.npy", scored, allow_pickle=False)
        shard = model.shard_bytes()
        Path(f"{out}.shard{rank}").write_bytes(shard)  # as a version of ranks stores it
        # a copy from each rank's own shard (the gate's reference on ranks) predicts as the model
        # did when the shards were written, however the model learns on
        copy = model.copy_from_shard(shard)
        model.learn(share(rows[:BATCH]))
        assert not np.allclose(model.predict(share(rows[-500:])), scored, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(copy.predict(share(rows[-500:])), scored)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ranks_score_what_one_process_scores(log: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from streamrec.local_stack import free_port

    port = free_port()
    mp.start_processes(_predict_rank, args=(str(log), port, str(tmp_path / "scored")), nprocs=2,
                       start_method="spawn")
    scored = np.concatenate([np.load(tmp_path / f"scored.{rank}.npy") for rank in range(2)])
    rows = list(read_rows(log, "criteo", READER))
    spec = SpecOptions(keyed=False).infer([r.features for r in rows[:SPEC_SAMPLE_ROWS]])
    model = create_model("wide_deep", spec, settings=sharded_settings("wide_deep", {}))
    featurizer = Featurizer(spec)
    for at in range(0, len(rows), BATCH):
        chunk = rows[at:at + BATCH]
        model.learn(featurizer.build([r.user_id for r in chunk], [r.item_id for r in chunk],
                                     [r.features for r in chunk], [r.label for r in chunk]))
    last = rows[-500:]
    expected = torch.sigmoid(model.logits(featurizer.build([r.user_id for r in last], [r.item_id for r in last],
                                                           [r.features for r in last]))).numpy()
    assert len(scored) == 500
    np.testing.assert_allclose(scored, expected, rtol=0, atol=2e-5)
    # every rank's shard, in any order, is the whole model to whoever loads it
    from streamrec.models import model_from_bytes, model_from_shards

    shards = [(tmp_path / f"scored.shard{rank}").read_bytes() for rank in range(2)]
    whole = model_from_shards(shards[::-1])
    probe = featurizer.build([r.user_id for r in last], [r.item_id for r in last], [r.features for r in last])
    np.testing.assert_allclose(whole.predict_proba(probe), expected, rtol=0, atol=2e-5)
    with pytest.raises(ModelError, match="shard 1 of 2"):
        model_from_bytes(shards[1])
    with pytest.raises(ModelError, match="not every shard of one model once"):
        model_from_shards([shards[0], shards[0]])


def _delta_rank(rank: int, path: str, port: int, out: str, keyed: bool) -> None:
    """Learn half the log, write this rank's shard; then, batch by batch, this rank's delta; then
    score the log's last rows."""
    import torch.distributed as dist

    try:
        rows, model, share = _two_ranks(rank, path, port, keyed)
        half = (len(rows) // BATCH // 2) * BATCH
        for at in range(0, half, BATCH):
            model.learn(share(rows[at:at + BATCH]))
        Path(f"{out}.version.{rank}").write_bytes(model.shard_bytes())
        for step, at in enumerate(range(half, len(rows) - 500, BATCH)):
            model.learn(share(rows[at:at + BATCH]))
            Path(f"{out}.delta{step}.{rank}").write_bytes(model.shard_delta_bytes(include_dense=True))
        np.save(f"{out}.{rank}.npy", model.predict(share(rows[-500:])), allow_pickle=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("keyed", [False, True], ids=["hashed", "keyed"])
def test_a_version_and_the_deltas_of_ranks_are_the_ranks_model_to_a_reader(log: Path, tmp_path: Path,
                                                                           keyed: bool) -> None:
    """A scorer's view: the shards of a version joined, then each step's delta shards joined and
    applied, predict what the ranks predict (every row lands where the version put it)."""
    import torch.multiprocessing as mp

    from streamrec.local_stack import free_port
    from streamrec.models import model_from_shards
    from streamrec.models.sharded import join_delta_shards

    out = tmp_path / "ranks"
    mp.start_processes(_delta_rank, args=(str(log), free_port(), str(out), keyed), nprocs=2, start_method="spawn")
    scored = np.concatenate([np.load(f"{out}.{rank}.npy") for rank in range(2)])
    whole = model_from_shards([Path(f"{out}.version.{rank}").read_bytes() for rank in range(2)])
    rows = list(read_rows(log, "criteo", READER))
    last = rows[-500:]
    probe = Featurizer(whole.spec).build([r.user_id for r in last], [r.item_id for r in last],
                                         [r.features for r in last])
    before = whole.predict_proba(probe)
    steps = len(list(tmp_path.glob("ranks.delta*.0")))
    assert steps >= 3
    for step in range(steps):
        whole.apply_delta(join_delta_shards([Path(f"{out}.delta{step}.{rank}").read_bytes() for rank in (1, 0)]))
    np.testing.assert_allclose(whole.predict_proba(probe), scored, rtol=0, atol=2e-5)
    assert np.abs(before - scored).max() > 1e-3  # the deltas moved the model
    with pytest.raises(ModelError, match="not every shard"):
        join_delta_shards([Path(f"{out}.delta0.0").read_bytes()] * 2)


def _hanging_rank(rank: int, path: str, port: int) -> None:
    """Rank 1 joins the group and then hangs; rank 0 goes on to learn."""
    import time
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=3))
    if rank == 1:
        time.sleep(120)
        return
    rows = list(itertools.islice(read_rows(Path(path), "criteo", READER), BATCH))
    spec = SpecOptions(keyed=False).infer([r.features for r in rows])
    model = ShardedModel(create_model("wide_deep", spec, settings=sharded_settings("wide_deep", {})))
    batch = Featurizer(spec).build([r.user_id for r in rows], [r.item_id for r in rows], [r.features for r in rows],
                                   [r.label for r in rows])
    model.learn(batch)


def test_a_hung_rank_fails_the_others_at_the_collective_timeout(log: Path) -> None:
    import time

    import torch.multiprocessing as mp

    from streamrec.local_stack import free_port

    port = free_port()
    ranks = mp.start_processes(_hanging_rank, args=(str(log), port), nprocs=2, join=False, start_method="spawn")
    started = time.monotonic()
    try:
        with pytest.raises(mp.ProcessRaisedException, match="(?i)timed? ?out"):
            while not ranks.join(timeout=1):
                assert time.monotonic() - started < 90, "rank 0 waited past its collective timeout"
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.kill()
                process.join()


def test_evaluate_on_ranks_from_the_command_line(log: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from streamrec.stream.quality_metrics import exact_auc

    command = [sys.executable, "-m", "streamrec", "evaluate", str(log), "--format", "criteo", "--user-field", "C1",
               "--item-field", "C2", "--tables", "hashed", "--batch-size", str(BATCH)]
    done = subprocess.run([*command, "--ranks", "2", "--report-json", str(tmp_path / "r.json")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    expected, _tensors, _model = _one_process(log, "wide_deep")
    labels = np.array([r.label for r in read_rows(log, "criteo", READER)], dtype=np.float64)
    assert report["ranks"] == 2 and report["examples"] == ROWS
    assert abs(report["auc"] - exact_auc(expected, labels)) < 1e-4
    for extra, flag in ((["--search"], "--search"),
                        (["--model", "din"], "sequence model"), (["--set", "ftrl.per_example=true"], "per_example"),
                        (["--model", "nosuch"], "nosuch")):
        refused = subprocess.run([*command, "--ranks", "2", *extra], capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and flag in refused.stderr, refused.stderr

"""The columnar path of ``streamrec evaluate`` against the row path it replaces for Criteo files:
the same rows, ids, predictions, report and malformed-row accounting."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from streamrec.evaluation import evaluate_columns, evaluate_file, evaluate_rows, read_ahead
from streamrec.models import spec_for
from streamrec.models.batch_unique import BatchUnique
from streamrec.producers.columns import first_rows, read_columns
from streamrec.producers.generator import criteo_lines, generate
from streamrec.producers.readers import ReaderOptions, ReadStats, read_rows
from streamrec.stream.errors import ConfigError, InputFormatError
from streamrec.stream.feature_spec import SpecOptions
from streamrec.stream.featurizer import Featurizer

OPTS = ReaderOptions(user_field="C1", item_field="C2")
SMALL_BLOCKS = 1 << 16  # about 250 rows a chunk: many chunks, none a multiple of the batch size


def _stream_file(tmp_path: Path, rows: int = 3000, damage: bool = True) -> Path:
    lines = list(criteo_lines(generate(rows, seed=3)))
    if damage:
        parts = lines[40].split("\t")
        parts[1] = ""    # I1 missing
        parts[14] = ""   # the user missing: the row index stands in
        parts[15] = ""   # the item missing: "none"
        parts[20] = ""   # a categorical feature missing
        lines[40] = "\t".join(parts)
        lines[100] = "1\t2\t3\n"                                 # too few columns
        lines[700] = "7" + lines[700][1:]                        # label not 0/1
        lines[1500] = lines[1500].split("\t", 1)[0] + "\tx1\t" + lines[1500].split("\t", 2)[2]  # I1 not an integer
        lines[2200] = "\n"                                       # an empty line
    path = tmp_path / "stream.tsv"
    path.write_text("".join(lines))
    return path


def test_columns_hold_what_the_row_reader_yields(tmp_path: Path) -> None:
    path = _stream_file(tmp_path)
    row_stats, column_stats = ReadStats(), ReadStats()
    rows = list(read_rows(path, "criteo", OPTS, row_stats))
    chunks = list(read_columns(path, "criteo", OPTS, column_stats, block_bytes=SMALL_BLOCKS))
    assert len(chunks) > 10
    assert sum(len(c) for c in chunks) == len(rows) == 2996
    assert [c.first_row for c in chunks] == list(np.cumsum([0] + [len(c) for c in chunks[:-1]]))
    assert (row_stats.rows, row_stats.malformed) == (column_stats.rows, column_stats.malformed) == (2996, 4)
    assert sorted(row_stats.errors) == sorted(column_stats.errors)
    assert np.array_equal(np.concatenate([c.labels for c in chunks]), [r.label for r in rows])
    assert sum((c.users.to_list() for c in chunks), []) == [r.user_id for r in rows]
    assert sum((c.items.to_list() for c in chunks), []) == [r.item_id for r in rows]
    assert rows[40].user_id == "row40" and rows[40].item_id == "none"
    dicts = sum((c.feature_dicts(len(c)) for c in chunks), [])
    assert dicts == [r.features for r in rows]


@pytest.mark.parametrize("model", ["lr", "wide_deep"])
def test_featurized_columns_equal_featurized_rows(tmp_path: Path, model: str) -> None:
    path = _stream_file(tmp_path)
    rows = list(read_rows(path, "criteo", OPTS))
    chunks = list(read_columns(path, "criteo", OPTS, block_bytes=SMALL_BLOCKS))
    spec = spec_for(model, SpecOptions(crosses=(("C5", "C6"),)).infer([r.features for r in rows[:1000]]))
    by_columns = [Featurizer(spec).build_columns(c) for c in chunks]
    by_rows = Featurizer(spec).build([r.user_id for r in rows], [r.item_id for r in rows],
                                     [r.features for r in rows], [r.label for r in rows])
    assert torch.equal(torch.cat([b.ids for b in by_columns]), by_rows.ids)
    assert torch.equal(torch.cat([b.cross_ids for b in by_columns]), by_rows.cross_ids)
    assert torch.equal(torch.cat([b.dense for b in by_columns]), by_rows.dense)
    assert torch.equal(torch.cat([b.labels for b in by_columns]), by_rows.labels)


# batch 64: chunks hold several mini-batches and a remainder; batch 512: a mini-batch spans chunks
@pytest.mark.parametrize(("model", "batch_size"), [("lr", 64), ("wide_deep", 64), ("lr", 512), ("wide_deep", 512)])
def test_columnar_pass_reports_what_the_row_pass_reports(tmp_path: Path, model: str, batch_size: int) -> None:
    path = _stream_file(tmp_path)
    rows, _ = evaluate_rows(read_rows(path, "criteo", OPTS), model, batch_size=batch_size)
    columns, _ = evaluate_columns(read_columns(path, "criteo", OPTS, block_bytes=SMALL_BLOCKS), model,
                                  batch_size=batch_size)
    assert columns["examples"] == rows["examples"] == 2996
    for key in ("auc", "auc_window", "logloss", "normalized_entropy", "calibration"):
        assert columns[key] == pytest.approx(rows[key], rel=1e-12, abs=1e-12), key


def test_evaluate_file_takes_the_columnar_path_with_limit_and_malformed_rows(tmp_path: Path) -> None:
    path = _stream_file(tmp_path)
    seen: list[int] = []
    report, _ = evaluate_file(path, "criteo", "lr", limit=1234, reader_options=OPTS, batch_size=100,
                              on_batch=seen.append)
    assert report["examples"] == sum(seen) == 1234
    assert report["malformed_rows"] >= 3  # rows 101, 701 and the chunk read ahead of the limit
    expected, _ = evaluate_rows(list(read_rows(path, "criteo", OPTS))[:1234], "lr", batch_size=100)
    assert report["auc"] == pytest.approx(expected["auc"], abs=1e-12)


def test_strict_columnar_read_names_the_line(tmp_path: Path) -> None:
    path = _stream_file(tmp_path)
    with pytest.raises(InputFormatError, match=r"stream\.tsv:101: expected 40"):
        list(read_columns(path, "criteo", ReaderOptions(strict=True)))
    lines = path.read_text().splitlines(keepends=True)
    del lines[100]
    path.write_text("".join(lines))
    with pytest.raises(InputFormatError, match=r"stream\.tsv:700: label must be 0 or 1, got '7'"):
        list(read_columns(path, "criteo", ReaderOptions(strict=True)))


def test_columnar_reader_checks_its_input(tmp_path: Path) -> None:
    path = _stream_file(tmp_path, rows=10, damage=False)
    with pytest.raises(ConfigError, match="--user-field 'C99'"):
        list(read_columns(path, "criteo", ReaderOptions(user_field="C99")))
    with pytest.raises(ConfigError, match="no columnar reader"):
        read_columns(path, "avazu")
    with pytest.raises(ConfigError, match="does not exist"):
        read_columns(tmp_path / "nope.tsv", "criteo")
    with pytest.raises(ConfigError, match="reads user histories"):
        evaluate_columns(read_columns(path, "criteo", OPTS), "din")


def test_first_rows_cuts_the_last_chunk(tmp_path: Path) -> None:
    path = _stream_file(tmp_path, damage=False)
    chunks = list(first_rows(read_columns(path, "criteo", OPTS, block_bytes=SMALL_BLOCKS), 1000))
    assert sum(len(c) for c in chunks) == 1000
    assert all(len(c.users.codes) == len(c.labels) == len(c.numeric["I1"].codes) for c in chunks)


def test_batch_unique_matches_torch_unique() -> None:
    unique = BatchUnique(5000)
    generator = torch.Generator().manual_seed(0)
    for shape in [(0,), (1,), (7, 3), (512, 40)]:
        ids = torch.randint(0, 5000, shape, generator=generator)
        distinct, inverse = unique(ids)
        assert inverse.shape == ids.shape
        assert torch.equal(distinct[inverse], ids)
        assert torch.equal(torch.sort(distinct).values, torch.unique(ids))


def test_read_ahead_raises_the_producers_error_and_stops_when_left() -> None:
    def failing():
        yield 1
        raise ValueError("broken block")

    with pytest.raises(ValueError, match="broken block"), read_ahead(failing()) as items:
        list(items)
    before = threading.active_count()
    with read_ahead(iter(range(10**9))) as items:
        assert next(items) == 0
    assert threading.active_count() == before  # the producing thread was stopped and joined

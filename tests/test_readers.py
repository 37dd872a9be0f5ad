from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.producers.readers import ColumnMapping, ReaderOptions, ReadStats, parse_mapping, read_rows
from streamrec.stream.errors import ConfigError, InputFormatError

CRITEO_GOOD = "1\t5\t\t3" + "\t1" * 10 + "\tu1\ta9" + "\tx" * 24 + "\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_criteo_good_row(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.tsv", CRITEO_GOOD)
    [row] = list(read_rows(path, "criteo", ReaderOptions(user_field="C1", item_field="C2")))
    assert row.label == 1
    assert (row.user_id, row.item_id) == ("u1", "a9")
    assert row.features["I1"] == 5 and row.features["I2"] is None and row.features["I3"] == 3
    assert "C1" not in row.features and row.features["C3"] == "x"
    assert len(row.features) == 13 + 24


def test_criteo_malformed_rows_are_counted_with_line_numbers(tmp_path: Path) -> None:
    bad_columns = "1\t2\t3\n"
    bad_label = "7" + CRITEO_GOOD[1:]
    bad_int = "0\tx" + CRITEO_GOOD[2:]
    path = _write(tmp_path, "c.tsv", CRITEO_GOOD + bad_columns + bad_label + bad_int + CRITEO_GOOD)
    stats = ReadStats()
    rows = list(read_rows(path, "criteo", ReaderOptions(), stats))
    assert len(rows) == 2 and stats.rows == 2 and stats.malformed == 3
    assert [e.split(": ", 1)[0].rsplit(":", 1)[1] for e in stats.errors] == ["2", "3", "4"]
    assert rows[1].user_id == "row1"  # no user field named: the row index stands in


def test_strict_fails_fast_naming_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.tsv", CRITEO_GOOD + "1\t2\n")
    with pytest.raises(InputFormatError, match=r"c\.tsv:2: expected 40"):
        list(read_rows(path, "criteo", ReaderOptions(strict=True)))


def test_unknown_user_field_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.tsv", CRITEO_GOOD)
    with pytest.raises(ConfigError, match="--user-field 'C99'"):
        list(read_rows(path, "criteo", ReaderOptions(user_field="C99")))


def test_avazu(tmp_path: Path) -> None:
    text = ("id,click,hour,C1,site_id,device_id\n"
            "1,0,14102100,1005,s1,d1\n"
            "2,1,14102100,1005,s2,d2\n"
            "3,x,14102100,1005,s2,d2\n"
            "4,1,14102101,1002,s3\n"
            "5,0,bad,1002,s3,d9\n")
    stats = ReadStats()
    rows = list(read_rows(_write(tmp_path, "a.csv", text), "avazu",
                          ReaderOptions(user_field="device_id", item_field="site_id"), stats))
    assert [r.label for r in rows] == [0, 1]
    assert rows[0].event_time == 1413849600.0  # 2014-10-21 00:00 UTC
    assert rows[1].event_time > rows[0].event_time
    assert rows[1].user_id == "d2" and rows[1].item_id == "s2" and rows[1].features == {"C1": "1005"}
    assert stats.malformed == 3
    assert any(":4:" in e and "click" in e for e in stats.errors)
    assert any(":6:" in e and "hour" in e for e in stats.errors)


def test_avazu_needs_header(tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match="header"):
        list(read_rows(_write(tmp_path, "a.csv", "1,0,14102100\n"), "avazu"))


@pytest.mark.parametrize("fmt", ["libsvm", "libfm"])
def test_libsvm_family(tmp_path: Path, fmt: str) -> None:
    text = "1 3:1 17:1 40:0.5\n-1 3:1 18:1\n0 bad\nx 1:1\n"
    stats = ReadStats()
    rows = list(read_rows(_write(tmp_path, "d.libfm", text), fmt, ReaderOptions(user_field="f0"), stats))
    assert [r.label for r in rows] == [1, 0]
    assert rows[0].user_id == "3" and rows[0].features == {"f1": "17", "f2": "40=0.5"}
    assert stats.malformed == 2


def test_csv_with_mapping(tmp_path: Path) -> None:
    text = "clicked,uid,ad,ts,country,price\n1,u1,a1,100.5,de,3.5\n0,u2,a2,101,fr,\n1,u3,a3,102,de,cheap\n"
    mapping = parse_mapping("label=clicked,user=uid,item=ad,time=ts", "price")
    stats = ReadStats()
    rows = list(read_rows(_write(tmp_path, "d.csv", text), "csv", ReaderOptions(mapping=mapping), stats))
    assert [(r.label, r.user_id, r.item_id, r.event_time) for r in rows] == [(1, "u1", "a1", 100.5), (0, "u2", "a2", 101.0)]
    assert rows[0].features == {"country": "de", "price": 3.5}
    assert rows[1].features["price"] is None
    assert stats.malformed == 1 and "price" in stats.errors[0]


def test_csv_mapping_with_missing_column_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        list(read_rows(_write(tmp_path, "d.csv", "label,a\n1,x\n"), "csv",
                       ReaderOptions(mapping=ColumnMapping(user="nope"))))


def test_jsonl_with_mapping(tmp_path: Path) -> None:
    text = '{"y": 1, "u": "u1", "i": "a", "tag": "t"}\n{broken\n{"y": 0, "u": "u2", "i": "b", "tag": null}\n[1]\n'
    stats = ReadStats()
    opts = ReaderOptions(mapping=parse_mapping("label=y,user=u,item=i"))
    rows = list(read_rows(_write(tmp_path, "d.jsonl", text), "jsonl", opts, stats))
    assert [(r.label, r.user_id, r.features) for r in rows] == [(1, "u1", {"tag": "t"}), (0, "u2", {"tag": None})]
    assert stats.malformed == 2


def test_unknown_format_and_bad_mapping() -> None:
    with pytest.raises(ConfigError, match="--format 'parquet'"):
        read_rows("x", "parquet")
    with pytest.raises(ConfigError, match="--columns"):
        parse_mapping("lable=x")

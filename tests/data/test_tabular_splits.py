"""CSV splits: ordered test and val rules, val files, and timestamp ties broken to the requested size."""

from pathlib import Path

import numpy as np
import pytest

from ctr.data.schema import DenseConfig, SplitConfig
from ctr.data.tabular import CsvFormatError
from tests.data.test_tabular import _lines, _run, _schema, _source, _write


def _indexed(tmp_path: Path, n: int, stamps=None, name: str = "ratings.csv") -> Path:
    """Rows whose `count` column holds their index in file order (read back as the dense value)."""
    lines = []
    for i, line in enumerate(_lines(n, seed=len(name))):
        fields = line.split(",")
        fields[3] = str(stamps[i] if stamps is not None else fields[3])
        fields[4] = str(i)
        lines.append(",".join(fields))
    return _write(tmp_path / name, lines)


def _indices(tmp_path: Path, split: str) -> np.ndarray:
    source = _source(tmp_path)
    return np.sort(source.rows(split, 0, source.num_rows(split)).dense[:, 0].astype(np.int64))


def _schema_with_index(tmp_path: Path, split: SplitConfig, **changes):
    return _schema(tmp_path, dense=[DenseConfig(column="count")], split=split, **changes)


def test_order_split_takes_the_last_rows_in_file_order_as_test(tmp_path):
    _indexed(tmp_path, 100)
    meta = _run(tmp_path, _schema_with_index(tmp_path, SplitConfig(by="order", test_ratio=0.2, val_ratio=0.1,
                                                                   val_by="order")))
    assert meta["splits"]["test"]["rows"] == 20 and meta["splits"]["val"]["rows"] == 8
    assert _indices(tmp_path, "test").tolist() == list(range(80, 100))
    assert _indices(tmp_path, "val").tolist() == list(range(72, 80))
    assert _indices(tmp_path, "train").tolist() == list(range(72))


def test_random_val_is_drawn_from_the_training_rows_of_an_order_split(tmp_path):
    _indexed(tmp_path, 200)
    meta = _run(tmp_path, _schema_with_index(tmp_path, SplitConfig(by="order", test_ratio=0.25, val_ratio=0.2)))
    assert _indices(tmp_path, "test").tolist() == list(range(150, 200))
    val = _indices(tmp_path, "val")
    assert 10 < len(val) < 60 and val.max() < 150 and val.min() < 100  # drawn, not the last rows
    assert meta["splits"]["train"]["rows"] + len(val) == 150


def test_timestamp_ties_are_broken_in_file_order_to_the_requested_size(tmp_path):
    # 100 rows over 5 timestamps, 20 rows each: the 20% test split is cut inside ties when
    # test_ratio=0.3, which used to send every row tied at the cut-off (40 rows) to test.
    stamps = np.repeat(np.arange(5), 20)[np.random.default_rng(0).permutation(100)]
    _indexed(tmp_path, 100, stamps)
    meta = _run(tmp_path, _schema_with_index(tmp_path, SplitConfig(by="timestamp", timestamp_column="ts",
                                                                   test_ratio=0.3)))
    assert meta["splits"]["test"]["rows"] == 30 and meta["splits"]["train"]["rows"] == 70
    ties = meta["timestamp_ties"]
    assert ties["cutoff"] == 3 and ties["rows_at_cutoff"] == 20 and ties["rows_at_cutoff_in_test"] == 10
    # Of the rows at the cut-off, the later ones in file order are test.
    at_cutoff = np.flatnonzero(stamps == 3)
    test = set(_indices(tmp_path, "test").tolist())
    assert set(at_cutoff[10:].tolist()) <= test and not set(at_cutoff[:10].tolist()) & test
    assert test >= set(np.flatnonzero(stamps == 4).tolist())


def test_ordered_val_of_a_timestamp_split_is_the_latest_training_rows(tmp_path):
    stamps = np.random.default_rng(1).permutation(100) * 10
    _indexed(tmp_path, 100, stamps)
    _run(tmp_path, _schema_with_index(tmp_path, SplitConfig(by="timestamp", timestamp_column="ts", test_ratio=0.2,
                                                            val_ratio=0.1, val_by="order")))
    def times(split):
        return np.sort(stamps[_indices(tmp_path, split)])
    assert len(times("val")) == 8 and times("train").max() < times("val").min()
    assert times("val").max() < times("test").min()


def test_val_files_are_the_validation_split(tmp_path):
    _indexed(tmp_path, 60, name="ratings.csv")
    _indexed(tmp_path, 15, name="val.csv")
    _indexed(tmp_path, 25, name="test.csv")
    meta = _run(tmp_path, _schema_with_index(tmp_path, SplitConfig(by="files"), val_files=["val.csv"],
                                             test_files=["test.csv"]))
    assert {s: meta["splits"][s]["rows"] for s in ("train", "val", "test")} == {"train": 60, "val": 15, "test": 25}


def test_val_files_and_a_val_ratio_together_are_refused(tmp_path):
    _indexed(tmp_path, 20)
    _indexed(tmp_path, 5, name="val.csv")
    with pytest.raises(CsvFormatError, match="val_files is set and data.schema.split.val_ratio=0.1"):
        _run(tmp_path, _schema_with_index(tmp_path, SplitConfig(by="ratio", val_ratio=0.1), val_files=["val.csv"]))

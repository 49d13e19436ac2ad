"""Criteo layout found by content (a sample named *.csv), and per-split row and positive counts."""

import numpy as np
import pytest

from ctr.data.criteo import CriteoFormatError, discover
from ctr.data.preprocess import preprocess
from ctr.data.shards import ShardSource
from tests.data.criteo_files import criteo_lines, write_criteo


def test_a_criteo_file_named_csv_in_a_directory_is_found_by_content(tmp_path):
    write_criteo(tmp_path / "in" / "sample.csv", criteo_lines(30))
    (tmp_path / "in" / "README.md").write_text("a note, not data\n")
    assert [f.path.name for f in discover(tmp_path / "in")] == ["sample.csv"]
    meta = preprocess(str(tmp_path / "in"), str(tmp_path / "out"), progress_bar=False)
    assert meta["num_rows"] == 30


def test_a_directory_without_criteo_content_names_what_it_looked_for(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(CriteoFormatError, match="holds no Criteo files.*40 tab-separated fields"):
        discover(tmp_path / "in")


@pytest.mark.parametrize("split_by", ["ratio", "day"])
def test_criteo_split_counts_match_the_rows_read(tmp_path, split_by):
    for day in range(3):
        write_criteo(tmp_path / "days" / f"day_{day}", criteo_lines(50 + 10 * day, seed=day))
    meta = preprocess(str(tmp_path / "days"), str(tmp_path / "out"), shard_rows=16, progress_bar=False)
    assert sum(meta["shard_positives"]) == meta["stats"]["label"]["positives"]
    source = ShardSource(str(tmp_path / "out"), split_by=split_by, train_ratio=0.7, val_ratio=0.1,
                         train_days=[0], val_days=[1], test_days=[2], shuffle_buffer=0)
    counts = source.split_counts()
    for split in ("train", "val", "test"):
        labels = source.rows(split, 0, source.num_rows(split)).labels
        assert counts[split] == {"rows": len(labels), "positives": int(np.sum(labels))}

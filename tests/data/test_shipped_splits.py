"""The shipped ordered-split configs on the real data beside the repo (skipped, saying so, when it is absent)."""

import numpy as np
import pytest
from hydra.utils import instantiate

from ctr.data.preprocess import preprocess
from ctr.data.tabular import csv_shards, preprocess_csv
from tests.data.criteo_files import SHARED_DATA
from tests.data.test_tabular_training import _data_config
from tests.hydra_config import compose

CRITEO = SHARED_DATA / "criteo-kaggle-10k"
MOVIELENS = SHARED_DATA / "movielens-100k"


@pytest.mark.skipif(not CRITEO.is_dir(), reason=f"{CRITEO} is not present")
def test_criteo_kaggle10k_is_8000_rows_then_2000_in_file_order(tmp_path):
    preprocess(str(CRITEO), str(tmp_path / "shards"), progress_bar=False)
    data = compose("data=criteo_kaggle10k", f"data.path={tmp_path / 'shards'}").data
    source = instantiate(data)
    counts = source.split_counts()
    assert {s: c["rows"] for s, c in counts.items()} == {"train": 7_200, "val": 800, "test": 2_000}
    # In file order: test is the file's last 2,000 lines, val the 800 before them.
    lines = (CRITEO / "train-10k.txt").read_text().splitlines()
    assert counts["test"]["positives"] == sum(line.startswith("1\t") for line in lines[8_000:])
    assert counts["val"]["positives"] == sum(line.startswith("1\t") for line in lines[7_200:8_000])


@pytest.mark.skipif(not MOVIELENS.is_dir(), reason=f"{MOVIELENS} is not present")
def test_movielens100k_temporal_is_80_20_by_time_with_the_latest_training_rows_as_val(tmp_path):
    data = _data_config("movielens100k_temporal", f"data.path={tmp_path / 'shards'}")
    meta = preprocess_csv(data.schema, data.path, progress_bar=False)
    assert {s: c["rows"] for s, c in meta["splits"].items()} == {"train": 72_000, "val": 8_000, "test": 20_000}
    assert sum(c["positives"] for c in meta["splits"].values()) == 34_174 + 21_201  # SOURCE.md: ratings 4 and 5
    ties = meta["timestamp_ties"]
    assert ties["rows_at_cutoff"] > ties["rows_at_cutoff_in_test"] >= 1
    stamps = np.loadtxt(MOVIELENS / "u.data", dtype=np.int64)[:, 3]
    assert ties["cutoff"] == np.sort(stamps)[80_000]
    source = csv_shards(data.path, data.schema)
    assert "zip3" in source.sparse_names and "release_year" in source.dense_names

"""The shard reader: refusal of incomplete directories, splits, and per-rank disjoint shuffled reads."""

import json

import numpy as np
import pytest

from ctr.data.preprocess import preprocess
from ctr.data.reader import batches, rank_rows
from ctr.data.shard_format import InvalidShardDirectory
from ctr.data.shards import ShardSource
from tests.data.criteo_files import criteo_lines, indexed_shards, write_criteo


def _row_index(rows) -> np.ndarray:
    """The fixtures' I1 is the row's index in the input (stored untransformed with log1p off)."""
    return rows.dense[:, 0].astype(np.int64)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return indexed_shards(tmp_path_factory.mktemp("shards"), 2500, seed=7, shard_rows=700)


@pytest.fixture(scope="module")
def day_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("days")
    for day in range(3):
        write_criteo(tmp / "in" / f"day_{day}.gz", criteo_lines(100 + day, first_index=1000 * day))
    preprocess(str(tmp / "in"), str(tmp / "out"), log1p=False, progress_bar=False)
    return tmp / "out"


def test_a_directory_without_valid_meta_is_refused(tmp_path, shards):
    with pytest.raises(InvalidShardDirectory, match="has no meta.json"):
        ShardSource(str(tmp_path))
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(InvalidShardDirectory, match="not valid JSON"):
        ShardSource(str(tmp_path))
    meta = json.loads((shards / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidShardDirectory, match="lists shard 0, but its column label is missing"):
        ShardSource(str(tmp_path))


def _copy(shards, directory):
    for path in shards.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    return directory


def test_a_flipped_bit_is_refused_by_default_when_its_shard_is_first_read(tmp_path, shards):
    path = _copy(shards, tmp_path) / "00001.C3.npy"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x04
    path.write_bytes(bytes(data))
    source = ShardSource(str(tmp_path), shuffle_buffer=0)
    source.rows("train", 0, 10)  # shard 0 is intact
    with pytest.raises(InvalidShardDirectory, match="00001.C3.npy: checksum differs from meta.json"):
        source.rows("train", 700, 710)
    unchecked = ShardSource(str(tmp_path), shuffle_buffer=0, verify_checksums=False)
    assert len(unchecked.rows("train", 700, 710)) == 10


@pytest.mark.parametrize("change,problem", [
    (lambda data: data[:-8], "cannot be read as a shard column .*mmap length"),
    (lambda data: data + b"\0" * 8, "is \\d+ bytes, its header says"),
    (lambda data: b"garbage" + data[7:], "cannot be read as a shard column"),
])
def test_a_truncated_or_damaged_shard_is_refused_naming_the_file_even_unverified(tmp_path, shards, change, problem):
    path = _copy(shards, tmp_path) / "00002.I4.npy"
    path.write_bytes(change(path.read_bytes()))
    source = ShardSource(str(tmp_path), shuffle_buffer=0, verify_checksums=False)
    with pytest.raises(InvalidShardDirectory, match=f"{path}.*{problem}"):
        source.rows("train", 1400, 1410)


def test_ratio_splits_are_consecutive_and_cover_every_row_once(shards):
    source = ShardSource(str(shards), train_ratio=0.7, val_ratio=0.1, shuffle_buffer=0)
    sizes = {split: source.num_rows(split) for split in ("train", "val", "test")}
    assert sizes == {"train": 1750, "val": 250, "test": 500}
    seen = np.concatenate([_row_index(source.rows(split, 0, n)) for split, n in sizes.items()])
    assert seen.tolist() == list(range(2500))
    assert source.rows("test", 10, 13).ids.shape == (3, 26)


def test_day_splits_take_whole_days(day_shards):
    source = ShardSource(str(day_shards), split_by="day", train_days=[0, 2], val_days=[], test_days=[1])
    assert source.num_rows("train") == 100 + 102 and source.num_rows("test") == 101
    assert set(_row_index(source.rows("test", 0, 101)) // 1000) == {1}
    with pytest.raises(ValueError, match=r"test_days names days \[23\]"):
        ShardSource(str(day_shards), split_by="day", train_days=[0], test_days=[23])
    with pytest.raises(ValueError, match="overlap"):
        ShardSource(str(day_shards), split_by="day", train_days=[0, 1], test_days=[1])


def test_two_ranks_see_every_train_row_exactly_once_per_epoch(shards):
    """Each rank builds its own source (as separate processes do); together they read each row once."""
    per_rank = []
    for rank in range(2):
        source = ShardSource(str(shards), shuffle_buffer=512, seed=3)
        rows = list(rank_rows(source, "train", 64, rank, 2, drop_last=False))
        per_rank.append(np.concatenate([_row_index(r) for r in rows]))
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(np.concatenate(per_rank).tolist()) == list(range(2000))
    assert per_rank[0][:64].tolist() != sorted(per_rank[0][:64].tolist()), "train rows should be shuffled"


def test_the_shuffle_is_reproducible_and_stays_within_its_buffer(shards):
    order = _row_index(ShardSource(str(shards), shuffle_buffer=512, seed=3).rows("train", 0, 2000))
    again = _row_index(ShardSource(str(shards), shuffle_buffer=512, seed=3).rows("train", 0, 2000))
    other = _row_index(ShardSource(str(shards), shuffle_buffer=512, seed=4).rows("train", 0, 2000))
    assert order.tolist() == again.tolist() and order.tolist() != other.tolist()
    assert np.all(order // 512 == np.arange(2000) // 512)
    test = _row_index(ShardSource(str(shards), shuffle_buffer=512).rows("test", 0, 250))
    assert test.tolist() == list(range(2250, 2500))


def test_batches_are_torchrec_batches_of_raw_ids(shards):
    source = ShardSource(str(shards))
    batch = next(batches(source, "train", 32, 0, 1, drop_last=True))
    assert batch.dense_features.shape == (32, 13) and batch.labels.shape == (32,)
    assert batch.sparse_features.keys() == [f"C{i}" for i in range(1, 27)]
    assert batch.sparse_features.values().dtype.is_floating_point is False
    assert int(batch.sparse_features.values().min()) >= 0

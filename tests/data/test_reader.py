"""Training batches: worker processes give the serial reader's batches in step order, a resumed
reader continues at the exact row, each epoch has its own order, the last partial step trains,
and Criteo days stream through a bounded window."""

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.data.preprocess import preprocess
from ctr.data.reader import TrainBatches, batches, train_batches, train_steps_per_epoch
from ctr.data.shard_format import shard_file
from ctr.data.shards import ShardSource
from tests.conftest import REPO
from tests.data.criteo_files import criteo_lines, indexed_shards, write_criteo
from tests.hydra_config import ON_CPU, TINY_MODEL


def _same(transform):
    return transform


def _index(batch) -> list:
    """The fixtures' I1 is the row's index in the input (stored untransformed with log1p off)."""
    return batch.dense_features[:, 0].long().tolist()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return indexed_shards(tmp_path_factory.mktemp("reader"), 2000, seed=8, shard_rows=500)


def _source(shards) -> ShardSource:
    return ShardSource(str(shards), train_ratio=0.8, val_ratio=0.1, shuffle_buffer=256, seed=5)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_worker_processes_give_the_serial_readers_batches_in_step_order(shards, workers):
    source = _source(shards)  # 1600 train rows: 5 full steps of 2 ranks x 160
    for rank in (0, 1):
        serial = list(batches(source, "train", 160, rank, 2, drop_last=True))
        dataset = TrainBatches(source, _same, 160, rank, 2, start_step=0, total_steps=5)
        read = list(train_batches(dataset, workers, pin_memory=False))
        assert len(read) == len(serial) == 5
        for got, expected in zip(read, serial):
            assert torch.equal(got.dense_features, expected.dense_features)
            assert torch.equal(got.sparse_features.values(), expected.sparse_features.values())
            assert torch.equal(got.labels, expected.labels)


def test_a_resumed_reader_continues_at_the_exact_row_in_its_epoch(shards):
    source = _source(shards)
    steps = train_steps_per_epoch(source.num_rows("train"), 96, 2)
    whole = [_index(b) for b in train_batches(TrainBatches(source, _same, 96, 1, 2, 0, 3 * steps), 2, False)]
    resumed = [_index(b) for b in train_batches(TrainBatches(source, _same, 96, 1, 2, steps + 3, 3 * steps), 2, False)]
    assert resumed == whole[steps + 3:]


def test_each_epoch_reshuffles_and_every_row_trains_including_the_last_partial_step(shards):
    source = _source(shards)  # 1600 rows, 2 ranks x 96: 8 full steps and 64 rows left, 32 per rank
    steps = train_steps_per_epoch(1600, 96, 2)
    assert steps == 9
    epochs = []
    for epoch in range(2):
        per_rank = [[_index(b) for b in TrainBatches(source, _same, 96, rank, 2, epoch * steps, (epoch + 1) * steps)]
                    for rank in (0, 1)]
        assert [len(b) for b in per_rank[0]] == [96] * 8 + [32]
        order = [i for step in zip(*per_rank) for rank_rows in step for i in rank_rows]
        assert sorted(order) == sorted(_index(next(batches(source, "train", 1600, 0, 1, True))))
        epochs.append(order)
    assert epochs[0] != epochs[1]
    # A remainder smaller than the number of ranks cannot give each rank a row, so it is left out.
    assert train_steps_per_epoch(1601, 800, 2) == 1 and train_steps_per_epoch(1602, 800, 2) == 2


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """24 Criteo day files, as the 1TB logs come."""
    tmp = tmp_path_factory.mktemp("days")
    for day in range(24):
        write_criteo(tmp / "in" / f"day_{day}", criteo_lines(2000, seed=day, first_index=10_000 * day))
    meta = preprocess(str(tmp / "in"), str(tmp / "out"), log1p=False, shard_rows=1000, progress_bar=False)
    return tmp / "out", meta


def test_days_0_to_22_stream_through_a_bounded_window_with_the_rows_of_an_unstreamed_read(days):
    out, meta = days
    window = 1024
    source = ShardSource(str(out), split_by="day", shuffle_buffer=window, seed=2)
    assert source.num_rows("train") == 23 * 2000 and source.num_rows("test") == 2000
    # Unstreamed: every train day's shards loaded whole, in day order, each window permuted as documented.
    train = [s for s in meta["shards"] if s["day"] < 23]
    labels = np.concatenate([np.load(shard_file(out, s["index"], "label")) for s in train])
    first = np.concatenate([np.load(shard_file(out, s["index"], "I1")) for s in train])
    epoch = 1
    expected = np.concatenate([
        start + np.random.default_rng([2, w, epoch]).permutation(min(window, len(first) - start))
        for w, start in enumerate(range(0, len(first), window))])

    steps = train_steps_per_epoch(len(first), 500, 1)
    next(iter(TrainBatches(source, _same, 500, 0, 1, 0, 1)))  # imports and caches of a first batch, apart
    tracemalloc.start()
    first_column, label_column = [], []
    for batch in TrainBatches(source, _same, 500, 0, 1, epoch * steps, 2 * steps):
        first_column.append(batch.dense_features[:, 0].numpy().copy())
        label_column.append(batch.labels.numpy().copy())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.concatenate(first_column).tolist() == first[expected].tolist()
    assert np.concatenate(label_column).tolist() == labels[expected].tolist()
    # A few windows of rows (about 264 bytes each; two are cached) and the bookkeeping of the
    # cached memory maps (64 shards x 40 columns, under 1 KB each), never the 23 days.
    row_bytes = 4 * (1 + 13) + 8 * 26
    bound = 6 * window * row_bytes + 64 * 40 * 1024
    assert peak < bound < len(first) * row_bytes / 2, f"peak {peak} bytes"
    assert [_index(b) for b in batches(source, "test", 2000, 0, 1, False)][0] == list(range(230_000, 232_000))


def test_training_through_reader_workers_matches_the_background_thread(shards, tmp_path):
    """`launch/train.py` on two ranks, two epochs: the same figures with 2 reader workers per rank as with none."""
    metrics = {}
    for workers in (0, 2):
        run_dir = tmp_path / f"workers{workers}"
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "launch/train.py",
             "data=criteo", f"data.path={shards}", "data.shuffle_buffer=256", f"trainer.reader_workers={workers}",
             *TINY_MODEL, "trainer.epochs=2", *ON_CPU, f"hydra.run.dir={run_dir}"],  # after TINY_MODEL's one epoch
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        metrics[workers] = json.loads((run_dir / "metrics.json").read_text())
    assert metrics[0]["train_steps"] == 2 * 25  # 1600 train rows, 2 ranks x 32
    for key in ("test_auc", "test_log_loss", "val_auc"):
        assert metrics[2][key] == metrics[0][key], key

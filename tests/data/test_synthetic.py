import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchmetrics.functional.classification import binary_auroc

from ctr.config import SyntheticDataConfig
from ctr.data.reader import batches, num_steps, prefetch, rank_ranges
from ctr.data.rows import rows_to_batch
from ctr.data.synthetic import SyntheticCriteo


def _synthetic(**settings) -> SyntheticCriteo:
    """The source `data=synthetic` builds, with the config's defaults for what `settings` leaves out."""
    return instantiate(SyntheticDataConfig(**settings))


def _source(**kwargs) -> SyntheticCriteo:
    defaults = dict(num_dense=4, num_sparse=5, vocab_min=5, vocab_max=1000, train_rows=5000, val_rows=100, test_rows=3000)
    return _synthetic(**{**defaults, **kwargs})


def test_criteo_shape_by_default():
    rows = _synthetic(train_rows=10).rows("train", 0, 10)
    assert rows.dense.shape == (10, 13) and rows.ids.shape == (10, 26)
    assert rows.dense.dtype == np.float32 and rows.ids.dtype == np.int64 and rows.labels.dtype == np.float32


def test_any_row_range_is_reproducible_without_the_rows_before_it():
    source = _source()
    whole = source.rows("train", 0, 3000)
    part = _source().rows("train", 1500, 2600)
    np.testing.assert_array_equal(part.ids, whole.ids[1500:2600])
    np.testing.assert_array_equal(part.labels, whole.labels[1500:2600])
    np.testing.assert_array_equal(part.dense, whole.dense[1500:2600])


def test_splits_and_seeds_give_different_rows():
    a, b = _source().rows("train", 0, 100), _source().rows("test", 0, 100)
    c = _source(seed=1).rows("train", 0, 100)
    assert not np.array_equal(a.ids, b.ids) and not np.array_equal(a.ids, c.ids)


def test_ids_are_zipf_like_and_nonnegative_64_bit():
    ids = _source().rows("train", 0, 5000).ids[:, -1]
    assert (ids >= 0).all()
    _, counts = np.unique(ids, return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[0] > 20 * counts[len(counts) // 2], "head ids must be far more frequent than the median id"


def test_teacher_separates_clicks_and_labels_follow_it():
    rows = _source().rows("test", 0, 3000)
    auc = binary_auroc(torch.from_numpy(rows.teacher_logits), torch.from_numpy(rows.labels).long()).item()
    assert 0.7 < auc < 0.99
    expected_ctr = (1 / (1 + np.exp(-rows.teacher_logits))).mean()
    assert abs(rows.labels.mean() - expected_ctr) < 0.03


def test_out_of_range_rows_and_unknown_split_fail_clearly():
    with pytest.raises(IndexError, match="outside split"):
        _source().rows("train", 4990, 5010)
    with pytest.raises(KeyError, match="unknown split"):
        _source().num_rows("validation")


@pytest.mark.parametrize("num_rows,batch_size,world_size,drop_last", [(1000, 64, 2, True), (1000, 64, 2, False), (997, 50, 3, False)])
def test_ranks_read_disjoint_rows_that_cover_the_split(num_rows, batch_size, world_size, drop_last):
    per_rank = [list(rank_ranges(num_rows, batch_size, r, world_size, drop_last)) for r in range(world_size)]
    assert len({len(ranges) for ranges in per_rank}) == 1, "every rank must take the same number of steps"
    assert len(per_rank[0]) == num_steps(num_rows, batch_size, world_size, drop_last)
    seen = [i for ranges in per_rank for start, stop in ranges for i in range(start, stop)]
    assert len(seen) == len(set(seen))
    expected = num_rows if not drop_last else (num_rows // (batch_size * world_size)) * batch_size * world_size
    assert sorted(seen) == list(range(expected))


def test_one_rank_with_a_double_batch_reads_what_two_ranks_read():
    source = _source()
    one = [b.labels for b in batches(source, "train", 128, 0, 1, True)]
    two = [list(batches(source, "train", 64, r, 2, True)) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1])
    for step, labels in enumerate(one):
        torch.testing.assert_close(labels, torch.cat([two[0][step].labels, two[1][step].labels]))


def test_batch_packs_one_id_per_feature_and_row():
    source = _source()
    rows = source.rows("train", 0, 3)
    kjt = rows_to_batch(rows, source.sparse_names).sparse_features
    assert kjt.keys() == source.sparse_names
    for i, name in enumerate(source.sparse_names):
        np.testing.assert_array_equal(kjt[name].values().numpy(), rows.ids[:, i])
        assert kjt[name].lengths().tolist() == [1, 1, 1]


def test_prefetch_yields_everything_in_order_and_reraises_errors():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise RuntimeError("bad shard")

    with pytest.raises(RuntimeError, match="bad shard"):
        list(prefetch(failing()))

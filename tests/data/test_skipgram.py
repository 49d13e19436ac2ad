"""Item2Vec's skip-gram rows: train-period sequences, windows, negatives, subsampling."""

import numpy as np
import pytest

from ctr.data.skipgram import SkipGramPairs, Sequences, keep_probabilities, window_pairs
from ctr.data.tabular import hash_ids
from tests.data.behaviour_log import behaviour_overrides, write_log
from tests.hydra_config import compose


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory):
    return write_log(tmp_path_factory.mktemp("log"))


def _pairs(log_dir, **options) -> SkipGramPairs:
    data = compose(*behaviour_overrides(log_dir)).data
    settings = {k: data[k] for k in ("user_column", "item_feature", "window", "negatives", "subsample", "seed")}
    return SkipGramPairs(data.behaviour, **{**settings, **options})


def _expected_train_sequences(log_dir):
    """By hand: rows sorted by time, test the latest 20%, val the latest 10% of the rest;
    each user's positively rated (>= 4) train items, oldest first."""
    rows = [line.split("\t") for line in (log_dir / "u.data").read_text().splitlines()]
    rows.sort(key=lambda r: int(r[3]))
    kept = rows[:int(len(rows) * 0.8)]
    train = kept[:int(len(kept) * 0.9)]
    sequences = {}
    for user, item, rating, _ in train:
        if int(rating) >= 4:
            sequences.setdefault(user, []).append(item)
    return sequences


def test_train_sequences_are_each_users_positive_train_period_items_in_time_order(log_dir):
    source = _pairs(log_dir)
    expected = _expected_train_sequences(log_dir)
    train = source.sequences["train"]
    assert sorted(train.users) == sorted(expected)
    for u, user in enumerate(train.users):
        assert train.of(u).tolist() == hash_ids("item_id", expected[user]).tolist()
    assert len(source.sequences["test"].items) > 0


def test_window_pairs_are_the_items_at_most_window_apart_within_one_users_sequence():
    s = Sequences(["a", "b"], np.array([1, 2, 3, 4, 10, 11]), np.array([0, 4, 6]))
    pairs = set(zip(*[a.tolist() for a in window_pairs(s, 2)]))
    assert pairs == {(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2), (2, 4), (4, 2), (3, 4), (4, 3), (10, 11), (11, 10)}
    everywhere = set(zip(*[a.tolist() for a in window_pairs(s, 0)]))
    assert everywhere == pairs | {(1, 4), (4, 1)}


def test_every_observed_pair_is_followed_by_its_negatives_and_rows_depend_only_on_seed_and_epoch(log_dir):
    source = _pairs(log_dir, negatives=3, subsample=0.0)
    centers, contexts = window_pairs(source.sequences["train"], 5)
    n = source.num_rows("train")
    assert n == len(centers) * 4
    rows = source.rows("train", 0, n, epoch=0)
    assert rows.labels.sum() == len(centers) and rows.dense.shape == (n, 0)
    observed = sorted(zip(*rows.ids[rows.labels == 1].T.tolist()))
    assert observed == sorted(zip(centers.tolist(), contexts.tolist()))
    assert set(rows.ids[rows.labels == 0, 1].tolist()) <= set(source.vocabulary.tolist())
    again = _pairs(log_dir, negatives=3, subsample=0.0).rows("train", 5, 50, epoch=0)
    assert np.array_equal(again.ids, rows.ids[5:50])
    assert not np.array_equal(source.rows("train", 0, n, epoch=1).ids, rows.ids)
    test = source.rows("test", 0, source.num_rows("test"))
    assert np.array_equal(test.labels[:4], [1, 0, 0, 0])


def test_negatives_follow_the_unigram_distribution_to_the_power(log_dir):
    source = _pairs(log_dir, negatives=50, subsample=0.0, unigram_power=0.75)
    items, counts = np.unique(source.sequences["train"].items, return_counts=True)
    expected = counts ** 0.75 / (counts ** 0.75).sum()
    assert np.allclose(source.noise, expected)
    rows = source.rows("train", 0, source.num_rows("train"))
    drawn = rows.ids[rows.labels == 0, 1]
    frequency = np.array([(drawn == item).mean() for item in items])
    # ~20k draws: each item's share within 4 standard errors of its probability
    assert np.all(np.abs(frequency - expected) < 4 * np.sqrt(expected * (1 - expected) / len(drawn)) + 1e-3)


def test_subsampling_drops_frequent_items_more_often():
    items = np.array([1] * 90 + [2] * 10)
    keep = keep_probabilities(items, 0.05)
    assert keep[0] < keep[-1] <= 1.0
    assert np.all(keep_probabilities(items, 0.0) == 1.0)


def test_subsampling_keeps_fewer_pairs_and_bad_settings_are_refused(log_dir):
    assert _pairs(log_dir, subsample=0.01).num_rows("train") < _pairs(log_dir, subsample=0.0).num_rows("train")
    with pytest.raises(ValueError, match="data.negatives=0"):
        _pairs(log_dir, negatives=0)
    with pytest.raises(ValueError, match="data.item_feature='genres'"):
        _pairs(log_dir, item_feature="genres")

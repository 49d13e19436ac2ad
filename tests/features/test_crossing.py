"""Crossed features: one row per id combination, stable per pair, spread like any hash."""

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.crossing import Cross, CrossedHashing, cross_ids, parse_crosses
from ctr.features.hashing import ModuloHashing


def _kjt(columns):
    """A KJT of raw ids from {key: [ids of row 0, ids of row 1, ...]}."""
    keys = list(columns)
    values = [i for key in keys for row in columns[key] for i in row]
    lengths = [len(row) for key in keys for row in columns[key]]
    return KeyedJaggedTensor.from_lengths_sync(keys, torch.tensor(values, dtype=torch.int64), torch.tensor(lengths))


def test_the_same_pair_hashes_to_the_same_row_and_different_pairs_apart():
    cross = Cross(("a", "b"), 1 << 40)  # a table this big makes a collision among 4 pairs a 1-in-10^10 event
    rows, lengths = cross_ids(_kjt({"a": [[1], [1], [2], [1]], "b": [[7], [7], [7], [8]]}), cross)
    assert lengths.tolist() == [1, 1, 1, 1]
    assert rows[0] == rows[1]  # (1, 7) twice
    assert len({rows[0].item(), rows[2].item(), rows[3].item()}) == 3  # (1, 7), (2, 7), (1, 8)
    swapped, _ = cross_ids(_kjt({"a": [[7]], "b": [[1]]}), cross)
    assert swapped[0] != rows[0], "a cross is ordered: (a=7, b=1) is not (a=1, b=7)"


def test_distinct_pairs_collide_at_the_rate_of_a_random_hash_into_the_table():
    rows_per_table, pairs = 10_000, 5_000
    a, b = np.divmod(np.arange(pairs), 97)  # 5,000 distinct (a, b) pairs
    rows, _ = cross_ids(_kjt({"a": [[int(x)] for x in a], "b": [[int(y) * 1_000_003] for y in b]}),
                        Cross(("a", "b"), rows_per_table))
    assert 0 <= rows.min() and rows.max() < rows_per_table
    occupied = len(set(rows.tolist()))
    expected = rows_per_table * (1 - (1 - 1 / rows_per_table) ** pairs)  # 3,935 rows for uniform hashing
    assert abs(occupied - expected) < 0.02 * expected, (occupied, expected)


def test_a_bag_crosses_as_the_cartesian_product_and_an_index_picks_one_member():
    columns = {"a": [[1], [2]], "bag": [[5, 6], []]}
    rows, lengths = cross_ids(_kjt(columns), Cross(("a", "bag"), 1 << 40))
    assert lengths.tolist() == [2, 0]  # row 1's empty bag gives no pair
    pairs = [cross_ids(_kjt({"a": [[1]], "bag": [[m]]}), Cross(("a", "bag"), 1 << 40))[0].item() for m in (5, 6)]
    assert rows.tolist() == pairs
    first, first_lengths = cross_ids(_kjt(columns), Cross(("a", "bag[0]"), 1 << 40))
    assert first_lengths.tolist() == [1, 0] and first.tolist() == pairs[:1]
    second, _ = cross_ids(_kjt(columns), Cross(("a", "bag[1]"), 1 << 40))
    assert second.tolist() == pairs[1:]


def test_crossed_hashing_appends_one_key_per_cross_and_keeps_the_features_tables():
    hashing = CrossedHashing(ModuloHashing({"a": 10, "bag": 10}), parse_crosses(
        [{"features": ["a", "bag[0]"], "num_embeddings": 50}], ["a", "bag"]))
    out = hashing.hash_features(_kjt({"a": [[13], [2]], "bag": [[5, 16], [7]]}))
    assert out.keys() == ["a", "bag", "a_x_bag_0"]
    assert out["a"].values().tolist() == [3, 2] and out["bag"].values().tolist() == [5, 6, 7]
    assert out["a_x_bag_0"].lengths().tolist() == [1, 1] and int(out["a_x_bag_0"].values().max()) < 50
    assert hashing.table_rows() == {"a": {"a": 10}, "bag": {"bag": 10}}


@pytest.mark.parametrize("spec,message", [
    ({"features": ["a"], "num_embeddings": 5}, "two or more"),
    ({"features": ["a", "nope"], "num_embeddings": 5}, "unknown: \\['nope'\\]"),
    ({"features": ["a", "bag[x]"], "num_embeddings": 5}, "unknown"),
    ({"features": ["a", "bag"], "num_embeddings": 0}, "num_embeddings=0"),
])
def test_a_bad_cross_names_its_config_key(spec, message):
    with pytest.raises(ValueError, match=r"model\.wide\.crosses\[0\]\..*" + message):
        parse_crosses([spec], ["a", "bag"])

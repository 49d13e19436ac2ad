import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.data.rows import Rows
from ctr.features.vocab import OOV_ROW, VocabHashing


class _Ids:
    """A source whose training split is the given id columns."""

    dense_names = ["d"]

    def __init__(self, **columns):
        self.sparse_names = list(columns)
        self._ids = np.stack([np.array(c, dtype=np.int64) for c in columns.values()], axis=1)

    def num_rows(self, split):
        return len(self._ids) if split == "train" else 0

    def rows(self, split, start, stop):
        n = stop - start
        return Rows(np.zeros((n, 1), np.float32), self._ids[start:stop], np.zeros(n, np.float32))


def test_vocab_gives_frequent_ids_rows_and_maps_rare_and_unseen_ids_to_the_oov_row():
    source = _Ids(a=[5, 5, 5, 9, 9, 1, 7, 7], b=[3, 3, 3, 3, 3, 3, 4, 8])
    hashing = VocabHashing({"a": 100, "b": 100}, source, min_count=2, sample_rows=1_000_000)
    assert hashing.table_rows() == {"a": {"a": 4}, "b": {"b": 2}}
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["a", "b"], torch.tensor([5, 7, 9, 1, 12345, 3, 4, 8, 3, 0]), torch.ones(10, dtype=torch.int32)
    )
    hashed = hashing.hash_features(kjt)
    assert hashed["a"].values().tolist() == [1, 2, 3, OOV_ROW, OOV_ROW]
    assert hashed["b"].values().tolist() == [1, OOV_ROW, OOV_ROW, 1, OOV_ROW]


def test_rows_of_gives_vocabulary_ids_their_rows_and_the_others_none():
    hashing = VocabHashing({"a": 100}, _Ids(a=[5, 5, 9, 9, 1]), min_count=2, sample_rows=1_000_000)
    assert hashing.rows_of("a", torch.tensor([9, 1, 5, 12345])).tolist() == [2, -1, 1, -1]


def test_vocab_keeps_the_most_frequent_ids_when_the_table_is_smaller():
    source = _Ids(a=[5, 5, 5, 9, 9, 7, 7, 7, 7])
    hashing = VocabHashing({"a": 3}, source, min_count=2, sample_rows=1_000_000)
    assert hashing.table_rows() == {"a": {"a": 3}}
    kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([5, 7, 9]), torch.ones(3, dtype=torch.int32))
    assert hashing.hash_features(kjt).values().tolist() == [1, 2, OOV_ROW]


def test_vocab_rejects_a_bad_min_count_naming_the_key():
    with pytest.raises(ValueError, match="embedding.hashing.min_count=0"):
        VocabHashing({"a": 3}, _Ids(a=[1]), min_count=0, sample_rows=1_000_000)

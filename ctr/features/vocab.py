"""Vocabulary hashing: frequent ids get their own row, the rest share one out-of-vocabulary row.

The counts come from the training split itself (its first `sample_rows` rows), not from
`meta.json`: preprocessing keeps only a handful of top ids per feature (a Misra-Gries
sketch), far too few for a vocabulary, and synthetic data has no `meta.json` at all.
Every rank counts the same rows, so every rank builds the same vocabulary.
"""

from typing import Dict, Mapping

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.data.reader import RowSource
from ctr.data.rows import rows_to_batch
from ctr.features.hashing import FeatureHashing, with_values

OOV_ROW = 0


def frequent_ids(ids: np.ndarray, min_count: int, max_ids: int) -> np.ndarray:
    """The ids seen at least `min_count` times, the `max_ids` most frequent of them, sorted.

    >>> frequent_ids(np.array([5, 5, 9, 9, 9, 2]), min_count=2, max_ids=10).tolist()
    [5, 9]
    """
    values, counts = np.unique(ids, return_counts=True)
    keep = counts >= min_count
    values, counts = values[keep], counts[keep]
    if len(values) > max_ids:
        values = values[np.argsort(-counts, kind="stable")[:max_ids]]
    return np.sort(values)


class VocabHashing(FeatureHashing):
    """Row = 1 + the id's place in the feature's vocabulary, or `OOV_ROW` (0) for other ids.

    A feature's table has len(vocabulary) + 1 rows, at most its configured table size.
    """

    def __init__(
        self,
        num_embeddings_per_feature: Mapping[str, int],
        source: RowSource,
        *,
        min_count: int,
        sample_rows: int,
    ) -> None:
        if min_count < 1:
            raise ValueError(f"embedding.hashing.min_count={min_count}: expected at least 1")
        stop = min(sample_rows, source.num_rows("train"))
        if stop < 1:
            raise ValueError("embedding.hashing=vocab counts ids over the training split, which is empty")
        sample = rows_to_batch(source.rows("train", 0, stop), source.sparse_names).sparse_features
        self._vocab: Dict[str, torch.Tensor] = {
            name: torch.from_numpy(frequent_ids(sample[name].values().numpy(), min_count, rows - 1))
            for name, rows in num_embeddings_per_feature.items()
        }

    def table_rows(self) -> Dict[str, Dict[str, int]]:
        return {name: {name: len(vocab) + 1} for name, vocab in self._vocab.items()}

    def row_ids(self, key: str) -> torch.Tensor:
        """Row 1 + i holds the i-th vocabulary id; the out-of-vocabulary row (0) none (-1)."""
        return torch.cat([torch.tensor([-1]), self._vocab[key]])

    def rows_of(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ids in the vocabulary; -1 for the others, which share the out-of-vocabulary row."""
        rows = super().rows_of(feature, ids)
        return torch.where(rows == OOV_ROW, -1, rows)

    def hash_features(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        parts = []
        for key, ids in zip(features.keys(), features.values().split(features.length_per_key())):
            vocab = self._vocab[key]
            place = torch.searchsorted(vocab, ids).clamp(max=max(len(vocab) - 1, 0))
            known = vocab[place] == ids if len(vocab) else torch.zeros_like(ids, dtype=torch.bool)
            parts.append(torch.where(known, place + 1, OOV_ROW))
        return with_values(features, torch.cat(parts) if parts else features.values(), features.keys())

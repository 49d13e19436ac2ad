"""Maps raw 64-bit ids to table rows.

Sources hash every categorical value to a stable 64-bit id before any modulo; the table
size is applied here, so it can change without reprocessing the data.
"""

from typing import Mapping, Sequence

import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


class ModuloHashing:
    """Row = raw id mod the feature's table size.

    >>> h = ModuloHashing({"a": 10})
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([123, 7]), torch.tensor([1, 1]))
    >>> h.hash_features(kjt).values()
    tensor([3, 7])
    """

    def __init__(self, num_embeddings_per_feature: Mapping[str, int]) -> None:
        self._num_embeddings = dict(num_embeddings_per_feature)

    def hash_features(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        sizes = torch.tensor([self._table_size(key) for key in features.keys()], dtype=torch.int64)
        per_value_size = torch.repeat_interleave(sizes, torch.tensor(features.length_per_key()))
        return KeyedJaggedTensor(
            keys=features.keys(),
            values=torch.remainder(features.values(), per_value_size),
            lengths=features.lengths(),
            weights=features.weights_or_none(),
        )

    def __call__(self, batch: Batch) -> Batch:
        return Batch(
            dense_features=batch.dense_features,
            sparse_features=self.hash_features(batch.sparse_features),
            labels=batch.labels,
        )

    def _table_size(self, key: str) -> int:
        if key not in self._num_embeddings:
            raise KeyError(f"sparse feature {key!r} has no table size; known: {sorted(self._num_embeddings)}")
        return self._num_embeddings[key]


def feature_table_sizes(
    sparse_names: Sequence[str], num_embeddings: int, per_feature: Mapping[str, int]
) -> dict:
    """Table size of each feature: the per-feature override, else the global size."""
    unknown = sorted(set(per_feature) - set(sparse_names))
    if unknown:
        raise KeyError(
            f"embedding.num_embeddings_per_feature names {unknown}, which are not sparse features "
            f"of the data ({list(sparse_names)})"
        )
    return {name: int(per_feature.get(name, num_embeddings)) for name in sparse_names}

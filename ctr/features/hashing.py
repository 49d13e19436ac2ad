"""Maps raw 64-bit ids to table rows: the `embedding/hashing` config group.

Sources hash every categorical value to a stable 64-bit id before any modulo; the table
size is applied here, so it can change without reprocessing the data. A hashing also
says which tables a feature needs: one (`modulo`, `vocab`) or several whose pooled
vectors are combined back into one (`qr`, see `ctr.features.embeddings`).
"""

from typing import Dict, Mapping, Optional, Sequence

import torch
from hydra.utils import instantiate
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import QRCombine
from ctr.features.tables import per_table_setting


class FeatureHashing:
    """Base of the hashings. Each is built as `cls(num_embeddings_per_feature, source, **options)`
    (from `embedding.hashing`), so one config switch picks any of them; `source` is there
    for hashings that learn from the data (`vocab`).

    `table_rows()[feature]` maps each KJT key the feature's ids go to (one per table) to
    that table's row count; `combine` is how a feature's parts are combined (sum or product).
    """

    combine = QRCombine.sum

    def table_rows(self) -> Dict[str, Dict[str, int]]:
        raise NotImplementedError

    def hash_features(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        raise NotImplementedError

    def row_ids(self, key: str) -> Optional[torch.Tensor]:
        """The raw id each row of `key`'s table holds (-1: a row no single id holds), where
        the hashing keeps raw ids (`vocab`); None where rows are shared by design (`modulo`, `qr`)."""
        return None

    def rows_of(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """The row of each raw id in `feature`'s table, or -1 for an id with no row of its own
        (where pre-trained vectors for it would overwrite one shared with other ids)."""
        hashed = self.hash_features(KeyedJaggedTensor.from_lengths_sync([feature], ids, torch.ones_like(ids, dtype=torch.int32)))
        if hashed.keys() != [feature]:
            raise ValueError(f"feature {feature!r} is hashed into the tables {hashed.keys()}, not one whose rows are its ids' "
                             "own (embedding.hashing=qr): a table of it can start from a checkpoint, not from vectors")
        return hashed.values()

    def __call__(self, batch: Batch) -> Batch:
        return Batch(
            dense_features=batch.dense_features,
            sparse_features=self.hash_features(batch.sparse_features),
            labels=batch.labels,
        )


def per_value(features: KeyedJaggedTensor, per_key: Sequence[int]) -> torch.Tensor:
    """`per_key[i]` repeated for every value of the i-th key: a key's constant, value-aligned."""
    return torch.repeat_interleave(torch.tensor(per_key, dtype=torch.int64), torch.tensor(features.length_per_key()))


def with_values(features: KeyedJaggedTensor, values: torch.Tensor, keys: Sequence[str]) -> KeyedJaggedTensor:
    """`features` with new values (and keys), same layout; the per-key lengths that
    `from_lengths_sync` cached are carried over, so no later stage reads them back from
    the device (a device-to-host copy, and a wait, per step on CUDA)."""
    return KeyedJaggedTensor(
        keys=list(keys), values=values, lengths=features.lengths(), offsets=features.offsets_or_none(),
        weights=features.weights_or_none(), stride=features.stride(),
        length_per_key=features.length_per_key_or_none(), offset_per_key=features.offset_per_key_or_none(),
    )


class ModuloHashing(FeatureHashing):
    """Row = raw id mod the feature's table size.

    >>> h = ModuloHashing({"a": 10})
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([123, 7]), torch.tensor([1, 1]))
    >>> h.hash_features(kjt).values()
    tensor([3, 7])
    """

    def __init__(self, num_embeddings_per_feature: Mapping[str, int], source: object = None) -> None:
        self._num_embeddings = dict(num_embeddings_per_feature)

    def table_rows(self) -> Dict[str, Dict[str, int]]:
        return {name: {name: rows} for name, rows in self._num_embeddings.items()}

    def hash_features(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        sizes = per_value(features, [self._table_size(key) for key in features.keys()])
        return with_values(features, torch.remainder(features.values(), sizes), features.keys())

    def _table_size(self, key: str) -> int:
        if key not in self._num_embeddings:
            raise KeyError(f"sparse feature {key!r} has no table size; known: {sorted(self._num_embeddings)}")
        return self._num_embeddings[key]


def build_hashing(embedding: Mapping, source) -> FeatureHashing:
    """The hashing `embedding.hashing` names, over the table sizes `embedding` gives `source`'s features."""
    if not isinstance(embedding.get("hashing"), Mapping):
        raise ValueError(
            f"embedding.hashing={embedding.get('hashing')!r} is not a hashing's config: pick one on the command "
            "line (embedding.hashing=qr or embedding/hashing=qr) or in a YAML defaults list (- hashing: qr); "
            "options: modulo, qr, vocab"
        )
    sizes = feature_table_sizes(source.sparse_names, embedding["num_embeddings"], embedding["num_embeddings_per_feature"],
                                getattr(source, "shared_tables", {}))
    return instantiate(embedding["hashing"], num_embeddings_per_feature=sizes, source=source, _convert_="all")


def feature_table_sizes(
    sparse_names: Sequence[str], num_embeddings: int, per_feature: Mapping[str, int],
    shared_tables: Mapping[str, Sequence[str]] = {},
) -> dict:
    """Table size of each feature: the per-feature override, else the global size.

    Features of a shared table (`{table: [feature, ...]}`, from the data) all take the
    table's size, overridden under the table's name.

    >>> feature_table_sizes(["a", "g1", "g2"], 100, {"genre": 20}, {"genre": ["g1", "g2"]})
    {'a': 100, 'g1': 20, 'g2': 20}
    """
    sizes = per_table_setting(sparse_names, num_embeddings, per_feature, shared_tables, "embedding.num_embeddings_per_feature")
    return {name: int(size) for name, size in sizes.items()}


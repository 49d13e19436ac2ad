"""Quotient-remainder compositional embeddings (Shi et al., KDD 2020), from ordinary tables.

A feature of N rows becomes two tables: the quotient table (⌈N/m⌉ rows) looked up with
row // m and the remainder table (m rows) with row % m, where row = id mod N. Each of the
N rows has a distinct (quotient, remainder) pair, so it gets its own vector (the two
lookups combined by sum or product) from about 2√N rows when m = ⌈√N⌉. Open-source
TorchRec/FBGEMM have no QR table; two plain tables shard like any other.
"""

import math
from typing import Dict, Mapping, Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import QRCombine
from ctr.features.hashing import FeatureHashing, per_value, with_values

QUOTIENT = "@q"
REMAINDER = "@r"


class QRHashing(FeatureHashing):
    """Each feature's ids go to two KJT keys, `<feature>@q` and `<feature>@r`.

    `remainder_rows` is m (null: ⌈√N⌉ per feature, the fewest rows in total); `combine`
    how the two vectors combine (`ctr.features.embeddings`).

    >>> h = QRHashing({"a": 10}, remainder_rows=4, combine="sum")
    >>> h.table_rows()
    {'a': {'a@q': 3, 'a@r': 4}}
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([7, 13]), torch.tensor([1, 1]))
    >>> out = h.hash_features(kjt)
    >>> out["a@q"].values().tolist(), out["a@r"].values().tolist()
    ([1, 0], [3, 3])
    """

    def __init__(
        self,
        num_embeddings_per_feature: Mapping[str, int],
        source: object = None,
        *,
        remainder_rows: Optional[int],
        combine: QRCombine,
    ) -> None:
        if remainder_rows is not None and remainder_rows < 1:
            raise ValueError(f"embedding.hashing.remainder_rows={remainder_rows}: expected a positive row count or null")
        self.combine = combine
        self._rows = dict(num_embeddings_per_feature)
        self._m = {name: remainder_rows or math.isqrt(n - 1) + 1 for name, n in self._rows.items()}

    def table_rows(self) -> Dict[str, Dict[str, int]]:
        return {
            name: {name + QUOTIENT: -(-n // self._m[name]), name + REMAINDER: self._m[name]}
            for name, n in self._rows.items()
        }

    def hash_features(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        keys = features.keys()
        unknown = sorted(set(keys) - set(self._rows))
        if unknown:
            raise KeyError(f"sparse features {unknown} have no table size; known: {sorted(self._rows)}")
        rows = torch.remainder(features.values(), per_value(features, [self._rows[k] for k in keys]))
        m = per_value(features, [self._m[k] for k in keys])
        return KeyedJaggedTensor.concat(
            [
                with_values(features, torch.div(rows, m, rounding_mode="floor"), [k + QUOTIENT for k in keys]),
                with_values(features, torch.remainder(rows, m), [k + REMAINDER for k in keys]),
            ]
        )

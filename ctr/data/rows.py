"""A block of rows as every source yields them, and its conversion to a TorchRec batch."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

# Ids are non-negative (`ctr.data.ids.to_id`), so a negative entry marks an unused bag slot.
BAG_PAD = -1


@dataclass
class Rows:
    """Rows of one split, columnar.

    dense: float32 [n, num_dense]; ids: int64 [n, num_sparse], raw 64-bit ids before any
    modulo; labels: float32 [n]; teacher_logits: float32 [n] where the source knows the
    true click model (synthetic data), else None; bags: multi-valued features, each int64
    [n, max_length] padded with BAG_PAD, in the order they follow the single-valued ones.
    """

    dense: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    teacher_logits: Optional[np.ndarray] = None
    bags: Dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index) -> "Rows":
        """The rows at `index` (a slice or integer positions)."""
        return Rows(self.dense[index], self.ids[index], self.labels[index],
                    None if self.teacher_logits is None else self.teacher_logits[index],
                    {name: bag[index] for name, bag in self.bags.items()})


def concat_rows(parts: Sequence[Rows]) -> Rows:
    """The rows of `parts`, one after the other."""
    first = parts[0]
    return Rows(np.concatenate([p.dense for p in parts]), np.concatenate([p.ids for p in parts]),
                np.concatenate([p.labels for p in parts]),
                None if first.teacher_logits is None else np.concatenate([p.teacher_logits for p in parts]),
                {name: np.concatenate([p.bags[name] for p in parts]) for name in first.bags})


def rows_to_batch(rows: Rows, sparse_names: Sequence[str]) -> Batch:
    """Packs sparse columns into a KeyedJaggedTensor: one id per row for the single-valued
    keys (the first `rows.ids.shape[1]` names), a variable-length list for each bag.

    >>> rows_to_batch(Rows(np.zeros((2, 1), np.float32), np.array([[7, 8], [9, 10]]),
    ...                    np.zeros(2, np.float32)), ["a", "b"]).sparse_features["a"].values()
    tensor([7, 9])
    >>> rows_to_batch(Rows(np.zeros((2, 1), np.float32), np.array([[7], [9]]), np.zeros(2, np.float32),
    ...                    bags={"g": np.array([[3, -1], [4, 5]])}), ["a", "g"]).sparse_features["g"].lengths()
    tensor([1, 2], dtype=torch.int32)
    """
    num_rows, num_keys = rows.ids.shape
    keys: List[str] = list(sparse_names)
    values = torch.from_numpy(np.ascontiguousarray(rows.ids.T)).reshape(-1)
    lengths = torch.ones(num_rows * num_keys, dtype=torch.int32)
    if rows.bags:
        bags = [rows.bags[name] for name in keys[num_keys:]]
        values = torch.cat([values, *(torch.from_numpy(bag[bag != BAG_PAD]) for bag in bags)])
        lengths = torch.cat([lengths, *(torch.from_numpy((bag != BAG_PAD).sum(1, dtype=np.int32)) for bag in bags)])
    return Batch(
        dense_features=torch.from_numpy(rows.dense),
        sparse_features=KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths),
        labels=torch.from_numpy(rows.labels),
    )

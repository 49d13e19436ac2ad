"""A block of rows as every source yields them, and its conversion to a TorchRec batch."""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


@dataclass
class Rows:
    """Rows of one split, columnar.

    dense: float32 [n, num_dense]; ids: int64 [n, num_sparse], raw 64-bit ids before any
    modulo; labels: float32 [n]; teacher_logits: float32 [n] where the source knows the
    true click model (synthetic data), else None.
    """

    dense: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    teacher_logits: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.labels)


def rows_to_batch(rows: Rows, sparse_names: Sequence[str]) -> Batch:
    """Packs single-valued sparse columns into a KeyedJaggedTensor (one id per row and key).

    >>> rows_to_batch(Rows(np.zeros((2, 1), np.float32), np.array([[7, 8], [9, 10]]),
    ...                    np.zeros(2, np.float32)), ["a", "b"]).sparse_features["a"].values()
    tensor([7, 9])
    """
    num_rows, num_keys = rows.ids.shape
    keys: List[str] = list(sparse_names)
    values = torch.from_numpy(np.ascontiguousarray(rows.ids.T)).reshape(-1)
    return Batch(
        dense_features=torch.from_numpy(rows.dense),
        sparse_features=KeyedJaggedTensor.from_lengths_sync(
            keys=keys,
            values=values,
            lengths=torch.ones(num_rows * num_keys, dtype=torch.int32),
        ),
        labels=torch.from_numpy(rows.labels),
    )

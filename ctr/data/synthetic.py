"""Synthetic Criteo-shaped click data with a planted teacher model.

Each row has `num_dense` log-transformed count features and `num_sparse` categorical
features whose ids follow a truncated Zipf law over a per-feature vocabulary (sizes
spread geometrically from `vocab_min` to `vocab_max`, like Criteo's mix of tiny and huge
columns). The label is drawn from sigmoid(teacher logit), where the hidden teacher is
a linear term over dense features, a per-id effect for every feature, and factorised
pairwise interactions. The teacher's AUC on a split is the best AUC any model can
reach there, so a trained model's AUC can be judged against it.

Rows are generated in fixed blocks from a seed derived from (seed, split, block), so
any row range is reproducible without generating the rows before it.
"""

from typing import Dict, List, Sequence

import numpy as np

from ctr.data.ids import splitmix64, to_id
from ctr.data.rows import Rows

_SPLITS: Dict[str, int] = {"train": 0, "val": 1, "test": 2}
_BLOCK_ROWS = 1024
_INTERACTION_RANK = 4
_NUM_INTERACTING_PAIRS = 12


class SyntheticCriteo:
    """Criteo-shaped rows with a known click model. See the module docstring; the settings'
    defaults are `ctr.config.SyntheticDataConfig`'s."""

    def __init__(
        self,
        num_dense: int,
        num_sparse: int,
        vocab_min: int,
        vocab_max: int,
        zipf_exponent: float,
        train_rows: int,
        val_rows: int,
        test_rows: int,
        seed: int,
        batch_size: int = 2048,
        max_epochs: int = 2,
    ) -> None:
        if not 1 <= vocab_min <= vocab_max:
            raise ValueError(f"data.vocab_min={vocab_min} and data.vocab_max={vocab_max}: need 1 <= min <= max")
        self.batch_size = batch_size  # the recommended per-rank batch size (`data.batch_size`)
        self.max_epochs = max_epochs  # the recommended cap on epochs (`data.max_epochs`)
        self.dense_names: List[str] = [f"int_{i}" for i in range(num_dense)]
        self.sparse_names: List[str] = [f"cat_{i}" for i in range(num_sparse)]
        self._num_rows = {"train": train_rows, "val": val_rows, "test": test_rows}
        self._seed = seed
        self.vocab_sizes = np.geomspace(vocab_min, vocab_max, num_sparse).round().astype(np.int64)

        rng = np.random.default_rng([seed, 0x7EAC4E7])
        self._id_cdfs = [self._zipf_cdf(int(v), zipf_exponent) for v in self.vocab_sizes]
        self._dense_rates = rng.uniform(0.05, 0.5, num_dense)
        self._dense_weights = rng.normal(0.0, 0.6 / np.sqrt(num_dense), num_dense)
        # Per-id effects shrink with popularity rank, as in real logs where head items
        # carry the most reliable signal; the tail still adds irreducible noise.
        self._id_effects = [
            rng.normal(0.0, 0.6, int(v)) / (1.0 + np.arange(int(v))) ** 0.25 for v in self.vocab_sizes
        ]
        self._factors = [
            rng.normal(0.0, 0.5, (int(v), _INTERACTION_RANK)) / (1.0 + np.arange(int(v)))[:, None] ** 0.25
            for v in self.vocab_sizes
        ]
        pairs = rng.choice(num_sparse, size=(_NUM_INTERACTING_PAIRS, 2), replace=True)
        self._pairs = [(int(a), int(b)) for a, b in pairs if a != b]
        self._bias = -1.2

    @staticmethod
    def _zipf_cdf(vocab: int, exponent: float) -> np.ndarray:
        weights = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** exponent
        cdf = np.cumsum(weights)
        return cdf / cdf[-1]

    def num_rows(self, split: str) -> int:
        if split not in self._num_rows:
            raise KeyError(f"unknown split {split!r}; expected one of {sorted(self._num_rows)}")
        return self._num_rows[split]

    def rows(self, split: str, start: int, stop: int, epoch: int = 0) -> Rows:
        """Rows [start, stop) of `split`, identical on every call and machine. The rows are
        independent draws, so their order carries nothing to reshuffle: every epoch reads them alike."""
        if not 0 <= start <= stop <= self.num_rows(split):
            raise IndexError(f"rows [{start}, {stop}) outside split {split!r} of {self.num_rows(split)} rows")
        first, last = start // _BLOCK_ROWS, max(stop - 1, start) // _BLOCK_ROWS
        blocks = [self._block(split, b) for b in range(first, last + 1)]
        offset = start - first * _BLOCK_ROWS
        pieces = [np.concatenate(field)[offset : offset + stop - start] for field in zip(*blocks)]
        return Rows(dense=pieces[0], ids=pieces[1], labels=pieces[2], teacher_logits=pieces[3])

    def _block(self, split: str, block: int) -> Sequence[np.ndarray]:
        rng = np.random.default_rng([self._seed, _SPLITS[split], block])
        n = _BLOCK_ROWS
        counts = rng.geometric(self._dense_rates, size=(n, len(self._dense_rates))) - 1
        dense = np.log1p(counts).astype(np.float32)
        ranks = np.stack([np.searchsorted(cdf, rng.random(n)) for cdf in self._id_cdfs], axis=1)
        feature_salt = (np.arange(ranks.shape[1], dtype=np.uint64) + np.uint64(1)) << np.uint64(40)
        ids = to_id(splitmix64(ranks.astype(np.uint64) | feature_salt))
        logits = self._teacher(dense, ranks)
        labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return dense, ids, labels, logits.astype(np.float32)

    def _teacher(self, dense: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        logit = self._bias + dense @ self._dense_weights
        for feature, effects in enumerate(self._id_effects):
            logit = logit + effects[ranks[:, feature]]
        for a, b in self._pairs:
            logit = logit + np.sum(self._factors[a][ranks[:, a]] * self._factors[b][ranks[:, b]], axis=1)
        return logit

"""Fixed-size streaming summaries of id columns, for the statistics in `meta.json`.

A data set far bigger than memory cannot keep a set of its ids; these summaries keep a
few kilobytes per feature whatever the row count, and their state is plain arrays, so
an interrupted preprocessing saves and resumes them.
"""

from typing import Dict, List, Tuple

import numpy as np


class HyperLogLog:
    """Distinct-count estimate per column (Flajolet et al. 2007), relative error ≈ 1.04/√(2^p).

    Ids must already be well-mixed 63-bit hashes (as every source's ids are): the top p
    bits pick a register, the position of the first set bit of the rest is recorded.

    >>> from ctr.data.ids import splitmix64, to_id
    >>> hll = HyperLogLog(num_columns=1)
    >>> hll.update(to_id(splitmix64(np.arange(1000) % 300))[:, None])
    >>> hll.estimates()  # 300 distinct ids
    [299]
    """

    def __init__(self, num_columns: int, p: int = 12) -> None:
        self.p = p
        self.registers = np.zeros((num_columns, 1 << p), dtype=np.uint8)

    def update(self, ids: np.ndarray) -> None:
        """Adds ids [n, num_columns]."""
        bits = ids.astype(np.uint64)
        index = (bits >> np.uint64(63 - self.p)).astype(np.int64)
        rest = bits & np.uint64((1 << (63 - self.p)) - 1)
        # frexp gives the bit length exactly: `rest` has fewer than 53 bits.
        rank = (63 - self.p) - np.frexp(rest.astype(np.float64))[1] + 1
        columns = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        np.maximum.at(self.registers, (columns, index), rank.astype(np.uint8))

    def merge(self, other: "HyperLogLog") -> None:
        """Adds another summary's ids (register-wise maximum: exact, in any order)."""
        np.maximum(self.registers, other.registers, out=self.registers)

    def estimates(self) -> List[int]:
        m = self.registers.shape[1]
        alpha = 0.7213 / (1 + 1.079 / m)
        raw = alpha * m * m / np.sum(2.0 ** -self.registers.astype(np.float64), axis=1)
        zeros = np.sum(self.registers == 0, axis=1)
        # Linear counting is the better estimator while many registers are still empty.
        small = (raw <= 2.5 * m) & (zeros > 0)
        linear = m * np.log(m / np.maximum(zeros, 1))
        return [int(round(x)) for x in np.where(small, linear, raw)]


class HeavyHitters:
    """The most frequent ids per column: a mergeable Misra-Gries summary (Agarwal et al. 2012).

    Each column keeps at most `k` counters; a reported count is a lower bound, short of
    the true count by at most `error_bound()` = rows seen / (k+1).

    >>> hh = HeavyHitters(num_columns=1, k=2)
    >>> hh.update(np.array([[5], [5], [5], [7], [9]]))
    >>> hh.top(1)[0]
    [(5, 2)]
    """

    def __init__(self, num_columns: int, k: int = 256) -> None:
        self.k = k
        self.rows = 0
        self.counters: List[Tuple[np.ndarray, np.ndarray]] = [
            (np.empty(0, np.int64), np.empty(0, np.int64)) for _ in range(num_columns)
        ]

    def update(self, ids: np.ndarray) -> None:
        self.rows += len(ids)
        for column in range(len(self.counters)):
            self._add(column, *np.unique(ids[:, column], return_counts=True))

    def merge(self, other: "HeavyHitters") -> None:
        """Adds another summary of other rows; the error bound stays rows seen / (k+1)."""
        self.rows += other.rows
        for column, (keys, counts) in enumerate(other.counters):
            self._add(column, keys, counts)

    def _add(self, column: int, new_keys: np.ndarray, new_counts: np.ndarray) -> None:
        """Adds counts of ids to a column's counters, keeping at most k."""
        keys, counts = self.counters[column]
        merged, where = np.unique(np.concatenate([keys, new_keys]), return_inverse=True)
        totals = np.bincount(where, weights=np.concatenate([counts, new_counts])).astype(np.int64)
        if len(totals) > self.k:
            totals = totals - np.partition(totals, -(self.k + 1))[-(self.k + 1)]
            keep = totals > 0
            merged, totals = merged[keep], totals[keep]
        self.counters[column] = (merged, totals)

    def top(self, n: int) -> List[List[Tuple[int, int]]]:
        """Per column, up to n (id, count lower bound) pairs, most frequent first."""
        result = []
        for keys, counts in self.counters:
            order = np.argsort(-counts, kind="stable")[:n]
            result.append([(int(keys[i]), int(counts[i])) for i in order])
        return result

    def error_bound(self) -> int:
        return self.rows // (self.k + 1)

    def state(self) -> Dict[str, np.ndarray]:
        """Plain arrays that `load_state` restores."""
        state = {"rows": np.array(self.rows)}
        for column, (keys, counts) in enumerate(self.counters):
            state[f"keys_{column}"], state[f"counts_{column}"] = keys, counts
        return state

    def load_state(self, state: Dict[str, np.ndarray]) -> None:
        self.rows = int(state["rows"])
        self.counters = [(state[f"keys_{c}"], state[f"counts_{c}"]) for c in range(len(self.counters))]

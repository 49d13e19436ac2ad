"""Item2Vec's training rows (Barkan & Koenigstein 2016): skip-gram with negative sampling
over users' behaviour sequences, as a RowSource.

A user's sequence is the items of their rows in one split of a CSV data set (`behaviour`:
its schema, split exactly as preprocessing splits it, so the train sequences hold the
training period only), the rows its label rule makes positive (`positives_only`), ordered
by `time_column` (ties in file order). Every (item, context) pair at most `window` apart in
a sequence (0: anywhere in it, Item2Vec's set context) is a row labelled 1, followed by
`negatives` rows (item, sampled item) labelled 0, the samples drawn from the train items'
counts raised to `unigram_power`. Skip-gram's negative-sampling loss is then the log-loss
of a click model over these rows, which is why Item2Vec trains as a model
(`model=item2vec`) through `launch/train.py`, not as a job of its own: one code path gives
it sharded tables, the fused optimizer, checkpoints, validation and the run directory.

Frequent items are subsampled in the train sequences (word2vec's rule: an occurrence of an
item with frequency f is kept with probability (sqrt(f/t) + 1) · t/f, t = `subsample`),
once per run: an epoch's step count is fixed when training starts, so the number of pairs
cannot change between epochs. Negatives and the order of the rows are drawn again each
epoch. val and test pairs (their splits' sequences) have fixed negatives and no
subsampling, so their AUC measures how well true co-occurrences outrank random items.
Every rank computes the same rows from the seed, as the shard reader does.
"""

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from ctr.data.rows import Rows
from ctr.data.shards import SPLITS
from ctr.data.tabular import as_schema, hash_ids, split_columns

CONTEXT_SUFFIX = "_context"
# Streams of the run's seed: one per random choice, so changing one leaves the others alone.
_SUBSAMPLE, _NEGATIVES, _ORDER = 1, 2, 3


@dataclass
class Sequences:
    """Users' item sequences of one split: `items[offsets[u]:offsets[u + 1]]` are user
    `users[u]`'s item ids (int64, as the data set hashes them), oldest first."""

    users: List[str]
    items: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def of(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]:self.offsets[user + 1]]


def behaviour_sequences(behaviour, user_column: str, item_feature: str, time_column: Optional[str] = None,
                        positives_only: bool = True) -> Dict[str, Sequences]:
    """Each split's sequences of the CSV data set `behaviour` (its config: `schema` is read).

    `item_feature` names one of the schema's single-column sparse features: its column gives
    the items, its table (or name) the namespace their ids are hashed in, so they are the
    ids the data set's shards hold for that feature."""
    schema = as_schema(behaviour["schema"])
    spec = next((s for s in schema.sparse if s.name == item_feature), None)
    if spec is None or len(spec.columns) != 1 or spec.flags or spec.delimiter:
        raise ValueError(f"data.item_feature={item_feature!r}: expected a single-column sparse feature of "
                         f"data.behaviour.schema, one of {[s.name for s in schema.sparse if len(s.columns) == 1]}")
    time_column = time_column or schema.split.timestamp_column
    if not time_column:
        raise ValueError("data.time_column is null and data.behaviour.schema.split.timestamp_column too: "
                         "name the column that orders a user's rows")
    label = schema.label
    columns = split_columns(schema, [user_column, spec.columns[0], time_column, label.column])
    sequences = {}
    for split, values in columns.items():
        users = np.array(values[user_column], dtype=object)
        times = np.array([float(t) for t in values[time_column]], np.float64)
        keep = np.ones(len(users), bool)
        if positives_only:
            raw = np.array([float(v) for v in values[label.column]], np.float64)
            keep = raw >= label.threshold if label.threshold is not None else raw == 1.0
        users, times = users[keep], times[keep]
        items = hash_ids(spec.table or spec.name, [v for v, k in zip(values[spec.columns[0]], keep) if k])
        order = np.lexsort((np.arange(len(users)), times, users.astype(str)))
        users, items = users[order], items[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
        sequences[split] = Sequences(list(users[starts]), items, np.r_[starts, len(users)].astype(np.int64))
    return sequences


def keep_probabilities(items: np.ndarray, threshold: float) -> np.ndarray:
    """word2vec's subsampling: each occurrence's chance to be kept, (sqrt(f/t) + 1) · t/f for
    an item of frequency f among `items`; t = `threshold` (0: keep all).

    >>> keep_probabilities(np.array([1, 1, 1, 2]), 0.5).round(3).tolist()
    [0.943, 0.943, 0.943, 1.0]
    """
    if threshold <= 0:
        return np.ones(len(items))
    _, inverse, counts = np.unique(items, return_inverse=True, return_counts=True)
    ratio = threshold / (counts[inverse] / len(items))
    return np.minimum(1.0, (np.sqrt(1.0 / ratio) + 1.0) * ratio)


def window_pairs(sequences: Sequences, window: int, kept: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(item, context) of every ordered pair of distinct positions at most `window` apart
    (0: any distance) within a sequence, `kept` occurrences only.

    >>> s = Sequences(["u"], np.array([7, 8, 9]), np.array([0, 3]))
    >>> [a.tolist() for a in window_pairs(s, 1)]
    [[7, 8, 8, 9], [8, 7, 9, 8]]
    """
    user = np.repeat(np.arange(len(sequences)), np.diff(sequences.offsets))
    items = sequences.items
    if kept is not None:
        items, user = items[kept], user[kept]
    longest = int(np.bincount(user).max()) if len(user) else 0
    reach = longest - 1 if window == 0 else min(window, max(longest - 1, 0))
    centers, contexts = [], []
    for distance in range(1, reach + 1):
        same = user[:-distance] == user[distance:]
        before, after = items[:-distance][same], items[distance:][same]
        centers += [before, after]
        contexts += [after, before]
    if not centers:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(centers), np.concatenate(contexts)


class SkipGramPairs:
    """RowSource of skip-gram rows (module docstring): ids [n, 2] = (item, context or sample),
    labels 1 / 0, no dense features. Sparse features: `item_feature` (the input vectors, the
    table to export) and `<item_feature>_context` (the output vectors).

    Each positive pair's row is followed by its `negatives` rows; the train split's rows
    are shuffled per epoch.
    """

    def __init__(self, behaviour, user_column: str, item_feature: str, time_column: Optional[str] = None,
                 positives_only: bool = True, window: int = 5, negatives: int = 5, unigram_power: float = 0.75,
                 subsample: float = 1e-3, seed: int = 0, batch_size: int = 1024, max_epochs: int = 10) -> None:
        for key, value, low in (("window", window, 0), ("negatives", negatives, 1)):
            if value < low:
                raise ValueError(f"data.{key}={value}: expected at least {low}")
        if subsample < 0:
            raise ValueError(f"data.subsample={subsample}: expected >= 0 (0: no subsampling)")
        self.batch_size = batch_size  # the recommended per-rank batch size (`data.batch_size`)
        self.max_epochs = max_epochs  # the recommended cap on epochs (`data.max_epochs`)
        self.dense_names: List[str] = []
        self.sparse_names: List[str] = [item_feature, item_feature + CONTEXT_SUFFIX]
        self.sequences = behaviour_sequences(behaviour, user_column, item_feature, time_column, positives_only)
        train = self.sequences["train"].items
        if not len(train):
            raise ValueError(f"data.behaviour: its train split has no {'positive ' if positives_only else ''}rows "
                             "to build sequences from")
        self.vocabulary, counts = np.unique(train, return_counts=True)
        weights = counts.astype(np.float64) ** unigram_power
        self.noise = weights / weights.sum()  # the negatives' distribution over `vocabulary`
        self._negatives, self._seed = negatives, seed
        rng = np.random.default_rng([seed, _SUBSAMPLE])
        kept = rng.random(len(train)) < keep_probabilities(train, subsample)
        self._pairs = {split: window_pairs(self.sequences[split], window, kept if split == "train" else None)
                       for split in SPLITS}
        self._epoch_rows = functools.lru_cache(maxsize=2)(self._draw)

    def num_rows(self, split: str) -> int:
        if split not in self._pairs:
            raise KeyError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return len(self._pairs[split][0]) * (1 + self._negatives)

    def rows(self, split: str, start: int, stop: int, epoch: int = 0) -> Rows:
        if not 0 <= start <= stop <= self.num_rows(split):
            raise IndexError(f"rows [{start}, {stop}) outside split {split!r} of {self.num_rows(split)} rows")
        centers, others, order = self._epoch_rows(split, epoch if split == "train" else 0)
        index = order[start:stop] if order is not None else np.arange(start, stop)
        pair, slot = np.divmod(index, 1 + self._negatives)
        ids = np.stack([centers[pair], others[pair, slot]], axis=1)
        return Rows(dense=np.zeros((len(index), 0), np.float32), ids=ids, labels=(slot == 0).astype(np.float32))

    def _draw(self, split: str, epoch: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """The split's pairs, each context followed by its negatives ([pairs, 1 + negatives]),
        and the train split's order of rows in `epoch`."""
        centers, contexts = self._pairs[split]
        stream = (self._seed, _NEGATIVES, SPLITS.index(split), epoch)
        samples = np.random.default_rng(stream).choice(len(self.vocabulary), (len(centers), self._negatives),
                                                       p=self.noise)
        others = np.concatenate([contexts[:, None], self.vocabulary[samples]], axis=1)
        order = None
        if split == "train":
            order = np.random.default_rng([self._seed, _ORDER, epoch]).permutation(others.size)
        return centers, others, order

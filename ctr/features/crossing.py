"""Crossed features: the hashed combination of several features' ids, a feature of its own.

A cross A×B (Cheng et al. 2016, Wide & Deep; tf's `crossed_column`) gives each row one id
per pair of its A and B ids, the Cartesian product when A or B is a bag, so a linear model
can learn a weight per co-occurrence. The id is splitmix64 chained over the raw 64-bit ids
(h = splitmix64(h ^ id), starting from splitmix64 of the first), taken mod the cross's own
`num_embeddings`: a pair always lands on the same row, different pairs collide only as
hashing into that many rows does (a fraction ≈ 1 - (1 - 1/N)^(P-1) of P distinct pairs).

An operand is a sparse feature's name (all its ids) or `name[i]`, the i-th id of a bag
(none where the row's bag is shorter): `userRatedMovies[0]` is the user's first rated
movie, the column `userRatedMovie1` of the SparrowRecSys data.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.data.ids import splitmix64, to_id
from ctr.features.hashing import FeatureHashing


_OPERAND = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<index>\d+)\])?$")


def _operand(text: str) -> Tuple[str, int]:
    """(feature, index) of a cross operand: `name` → (name, -1), `name[i]` → (name, i)."""
    match = _OPERAND.match(text)
    if match is None:
        raise ValueError(f"cross operand {text!r}: expected a feature name or name[i]")
    return match["name"], int(match["index"]) if match["index"] is not None else -1


@dataclass(frozen=True)
class Cross:
    """One crossed feature: the features crossed, in order, and its table's rows."""

    features: Tuple[str, ...]
    num_embeddings: int

    @property
    def key(self) -> str:
        """Its KJT key (and table feature name): `movieId_x_userRatedMovies_0` for movieId × userRatedMovies[0]."""
        return "_x_".join(f.replace("[", "_").replace("]", "") for f in self.features)


def parse_crosses(crosses: Sequence[Mapping], sparse_names: Sequence[str], setting: str = "model.wide.crosses") -> List[Cross]:
    """The configured crosses (`[{features: [A, B], num_embeddings: N}, ...]`), checked against the data."""
    parsed = []
    for i, spec in enumerate(crosses):
        features, rows = tuple(spec.get("features") or ()), spec.get("num_embeddings")
        unknown = [f for f in features if not _OPERAND.match(f) or _operand(f)[0] not in sparse_names]
        if len(features) < 2 or unknown:
            raise ValueError(
                f"{setting}[{i}].features={list(features)}: expected two or more sparse features of the data "
                f"{list(sparse_names)}, each `name` or `name[i]` (a bag's i-th id)" + (f"; unknown: {unknown}" if unknown else "")
            )
        if not isinstance(rows, int) or rows <= 0:
            raise ValueError(f"{setting}[{i}].num_embeddings={rows!r}: expected a positive number of rows")
        parsed.append(Cross(features, rows))
    keys = [c.key for c in parsed]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{setting}: crosses repeat: {keys}")
    return parsed


def _starts(lengths: torch.Tensor) -> torch.Tensor:
    """Where each row's ids begin in a jagged column's values."""
    return torch.cumsum(lengths, 0) - lengths


def _pairs(a: torch.Tensor, a_lengths: torch.Tensor, b: torch.Tensor, b_lengths: torch.Tensor):
    """Per row, every (a, b) of its ids, a-major: the Cartesian product of two jagged columns."""
    lengths = a_lengths * b_lengths
    row = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    position = torch.arange(int(lengths.sum())) - _starts(lengths)[row]
    a_at = _starts(a_lengths)[row] + torch.div(position, b_lengths[row], rounding_mode="floor")
    b_at = _starts(b_lengths)[row] + position % b_lengths[row]
    return a[a_at], b[b_at], lengths


def _column(columns: Mapping, operand: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ids, lengths) of an operand: all the feature's ids, or only each row's i-th."""
    name, index = _operand(operand)
    values, lengths = columns[name].values(), columns[name].lengths().long()
    if index < 0:
        return values, lengths
    has = lengths > index
    return values[(_starts(lengths) + index)[has]], has.long()


def _mix(h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """splitmix64(h ^ id) on the 64-bit patterns (int64 tensors in and out)."""
    mixed = splitmix64(h.numpy().view(np.uint64) ^ ids.numpy().view(np.uint64))
    return torch.from_numpy(mixed.view(np.int64))


def cross_ids(features: KeyedJaggedTensor, cross: Cross) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, lengths) of `cross` for a KJT of raw ids: a row per id combination, per batch row.

    >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([1, 2, 7, 8, 9]), torch.tensor([1, 1, 2, 1]))
    >>> rows, lengths = cross_ids(kjt, Cross(("a", "b"), 1000))
    >>> lengths.tolist(), rows[0] == rows[1]
    ([2, 1], tensor(False))
    """
    columns = features.to_dict()
    ids, lengths = _column(columns, cross.features[0])
    h = _mix(torch.zeros_like(ids), ids)
    for operand in cross.features[1:]:
        ids, ids_lengths = _column(columns, operand)
        h, ids, lengths = _pairs(h, lengths, ids, ids_lengths)
        h = _mix(h, ids)
    return torch.from_numpy(to_id(h.numpy().view(np.uint64))) % cross.num_embeddings, lengths


class CrossedHashing(FeatureHashing):
    """A hashing (`embedding.hashing`) that also appends one KJT key per cross, whose ids are
    already rows of the cross's table. Applied to the raw batch in the data path (train,
    evaluate, export), so the sparse modules take their input straight from the batch.

    `table_rows()` stays the features' own; the crosses' tables belong to the model that
    reads them (`ctr.models.wide_deep`), sized from the same `Cross`es.
    """

    def __init__(self, hashing: FeatureHashing, crosses: Sequence[Cross]) -> None:
        self.hashing = hashing
        self.crosses = list(crosses)
        self.combine = hashing.combine

    def table_rows(self) -> Dict[str, Dict[str, int]]:
        return self.hashing.table_rows()

    def row_ids(self, key: str) -> Optional[torch.Tensor]:
        return self.hashing.row_ids(key)

    def rows_of(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        return self.hashing.rows_of(feature, ids)

    def hash_features(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        crossed = [cross_ids(features, cross) for cross in self.crosses]
        appended = KeyedJaggedTensor(
            keys=[cross.key for cross in self.crosses],
            values=torch.cat([rows for rows, _ in crossed]),
            lengths=torch.cat([lengths for _, lengths in crossed]).int(),
            stride=features.stride(),
            length_per_key=[len(rows) for rows, _ in crossed],  # known here, on the host: no read-back later
        )
        return KeyedJaggedTensor.concat([self.hashing.hash_features(features), appended])

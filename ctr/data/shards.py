"""The RowSource that streams preprocessed shards (layout: `ctr.data.shard_format`).

Columns are memory-mapped: a batch reads only its rows, and the OS page cache, not the
process, holds the data set. Criteo shards never span input files, so a split can be cut
by Criteo day as well as by row ratios; CSV shards each hold one split, decided when
they were written (`split_by="preprocessed"`).
"""

import functools
from enum import StrEnum
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ctr.data.rows import Rows, concat_rows
from ctr.data.shard_format import InvalidShardDirectory, data_sha256, read_meta, shard_file

SPLITS = ("train", "val", "test")
SHUFFLE_BUFFER = 65536
_OPEN_SHARDS = 64


class SplitBy(StrEnum):
    """`data.split_by`: consecutive rows by ratios, whole Criteo days, or the split each
    shard was written for."""

    ratio = "ratio"
    day = "day"
    preprocessed = "preprocessed"


class ShardSource:
    """RowSource over a shard directory, with train/val/test cut by ratios, by Criteo day, or
    as preprocessing assigned them (`split_by="preprocessed"`).

    The train split is shuffled within consecutive windows of `shuffle_buffer` rows by a
    permutation seeded by (seed, window, epoch), so every rank computes the same order
    without talking to the others, ranks' row ranges stay disjoint, each epoch has its own
    order, and a resumed run reads exactly the rows it would have read. A window is read
    sequentially and held in memory while its rows are served (about 270 bytes per row for
    Criteo; at most two windows per reading process): whole Criteo days stream through a
    bounded window. val and test keep file order.

    Every column file's row count and size are checked when it is opened, and, with
    `verify_checksums`, its sha256 against meta.json the first time this process opens its
    shard: one hashing pass over the data read, cheaper than reading it (README, "Trust and
    safety"). Every read error names the file.
    """

    def __init__(
        self,
        path: str,
        split_by: str = SplitBy.ratio,
        train_ratio: float = 0.8,
        val_ratio: float = 0.1,
        train_days: Sequence[int] = tuple(range(23)),
        val_days: Sequence[int] = (),
        test_days: Sequence[int] = (23,),
        shuffle_buffer: int = SHUFFLE_BUFFER,
        seed: int = 0,
        verify_checksums: bool = True,
        batch_size: int = 2048,
        max_epochs: int = 10,
    ) -> None:
        self.batch_size = batch_size  # the recommended per-rank batch size (`data.batch_size`)
        self.max_epochs = max_epochs  # the recommended cap on epochs (`data.max_epochs`)
        self._directory = Path(path)
        meta = read_meta(self._directory)
        self.meta = meta
        self.dense_names: List[str] = list(meta["dense"])
        self._bag_names: List[str] = list(meta.get("bags", []))
        self.sparse_names: List[str] = list(meta["sparse"]) + self._bag_names
        # Features that share one embedding table: {table: [feature, ...]}.
        self.shared_tables: Dict[str, List[str]] = dict(meta.get("shared_tables", {}))
        # Normalisation whose statistics preprocessing computed (CSV sources): dense ← (dense - shift) · scale.
        transform = meta.get("dense_transform")
        self._dense_transform = None if transform is None else (
            np.array(transform["shift"], np.float32), np.array(transform["scale"], np.float32))
        self._columns = tuple(meta["columns"])
        self._shard_rows = {s["index"]: s["rows"] for s in meta["shards"]}
        # Per instance, so a directory rewritten since is never read through stale maps.
        self._open_shard = functools.lru_cache(maxsize=_OPEN_SHARDS)(self._map_shard)
        self._window = functools.lru_cache(maxsize=2)(self._read_window)
        self._checksums = {s["index"]: s["sha256"] for s in meta["shards"]} if verify_checksums else {}
        split_by = SplitBy(split_by)
        if split_by == SplitBy.ratio:
            self._segments = _ratio_segments(meta["shards"], train_ratio, val_ratio)
        elif split_by == SplitBy.day:
            self._segments = _day_segments(meta["shards"], {"train": train_days, "val": val_days, "test": test_days}, path)
        else:
            self._segments = _preprocessed_segments(meta["shards"], path)
        if shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer={shuffle_buffer}: expected >= 0 (0: no shuffling)")
        self._shuffle_buffer = shuffle_buffer
        self._seed = seed

    def num_rows(self, split: str) -> int:
        if split not in self._segments:
            raise KeyError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return int(self._segments[split][2][-1])

    def split_counts(self) -> Dict[str, Dict[str, int]]:
        """Rows and positives per split, as CSV meta.json's `splits`: whole shards from meta.json's
        `shard_positives` (Criteo) where recorded, any other piece by reading its labels."""
        recorded = self.meta.get("shard_positives")
        counts = {}
        for split, (shards, firsts, offsets) in self._segments.items():
            positives = 0
            for shard, first, rows in zip(shards.tolist(), firsts.tolist(), np.diff(offsets).tolist()):
                if recorded is not None and first == 0 and rows == self._shard_rows[shard]:
                    positives += recorded[shard]
                else:
                    positives += int(self._open_shard(shard)["label"][first:first + rows].sum(dtype=np.float64))
            counts[split] = {"rows": int(offsets[-1]), "positives": positives}
        return counts

    def rows(self, split: str, start: int, stop: int, epoch: int = 0) -> Rows:
        """Rows [start, stop) of `split` in its (shuffled, for train: in `epoch`'s) order."""
        if not 0 <= start <= stop <= self.num_rows(split):
            raise IndexError(f"rows [{start}, {stop}) outside split {split!r} of {self.num_rows(split)} rows")
        if split != "train" or not self._shuffle_buffer or start == stop:
            return self._gather(split, np.arange(start, stop, dtype=np.int64))
        buffer = self._shuffle_buffer
        pieces = []
        for window in range(start // buffer, (stop - 1) // buffer + 1):
            rows, permutation = self._window(window, epoch)
            base = window * buffer
            picked = permutation[max(start, base) - base : min(stop, base + len(permutation)) - base]
            pieces.append(rows.take(picked))
        return concat_rows(pieces)

    def _read_window(self, window: int, epoch: int) -> Tuple[Rows, np.ndarray]:
        """A window of train rows, read in one sequential pass, and its seeded permutation in `epoch`."""
        base = window * self._shuffle_buffer
        size = min(self._shuffle_buffer, self.num_rows("train") - base)
        permutation = np.random.default_rng([self._seed, window, epoch]).permutation(size)
        return self._gather("train", np.arange(base, base + size, dtype=np.int64)), permutation

    def _gather(self, split: str, positions: np.ndarray) -> Rows:
        shards, firsts, offsets = self._segments[split]
        segment = np.searchsorted(offsets, positions, side="right") - 1
        n = len(positions)
        dense = np.empty((n, len(self.dense_names)), np.float32)
        ids = np.empty((n, len(self.sparse_names) - len(self._bag_names)), np.int64)
        labels = np.empty(n, np.float32)
        bags = {name: np.empty((n, self.meta["bag_lengths"][name]), np.int64) for name in self._bag_names}
        for s in np.unique(segment):
            mask = segment == s
            local = _as_slice(positions[mask] - offsets[s] + firsts[s])
            maps = self._open_shard(int(shards[s]))
            labels[mask] = maps["label"][local]
            for j, name in enumerate(self.dense_names):
                dense[mask, j] = maps[name][local]
            for j, name in enumerate(self.sparse_names[: ids.shape[1]]):
                ids[mask, j] = maps[name][local]
            for name, bag in bags.items():
                bag[mask] = maps[name][local]
        if self._dense_transform is not None:
            shift, scale = self._dense_transform
            dense = (dense - shift) * scale
        return Rows(dense=dense, ids=ids, labels=labels, bags=bags)

    def _map_shard(self, shard: int) -> Dict[str, np.ndarray]:
        """Memory maps of one shard's columns, their sizes checked and, the first time this
        process opens the shard, their checksums; a bounded cache keeps the number of maps small."""
        maps = {c: _map_column(shard_file(self._directory, shard, c), self._shard_rows[shard]) for c in self._columns}
        for column, checksum in self._checksums.get(shard, {}).items():
            if data_sha256(maps[column]) != checksum:
                raise InvalidShardDirectory(f"{shard_file(self._directory, shard, column)}: checksum differs from "
                                            "meta.json; the shard is corrupted")
        self._checksums.pop(shard, None)
        return maps


def _map_column(path: Path, rows: int) -> np.ndarray:
    """A column file as a read-only memory map, refused (named) unless it holds exactly `rows`
    rows and ends where its data ends: a truncated or padded file never reaches a batch."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise InvalidShardDirectory(f"{path}: cannot be read as a shard column ({error})") from error
    if len(array) != rows:
        raise InvalidShardDirectory(f"{path} has {len(array)} rows, meta.json says {rows}")
    size = path.stat().st_size
    if size != array.offset + array.nbytes:
        raise InvalidShardDirectory(f"{path} is {size} bytes, its header says {array.offset + array.nbytes}")
    return array


def _as_slice(local: np.ndarray):
    """A slice where the rows are consecutive (unshuffled reads), so memmaps copy one block."""
    if len(local) and local[-1] - local[0] == len(local) - 1 and np.all(np.diff(local) == 1):
        return slice(int(local[0]), int(local[-1]) + 1)
    return local


Segments = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _segments(pieces: List[Tuple[int, int, int]]) -> Segments:
    """(shard, first row, stop row) pieces → (shards, first rows, cumulative split offsets)."""
    shards = np.array([p[0] for p in pieces], np.int64)
    firsts = np.array([p[1] for p in pieces], np.int64)
    offsets = np.concatenate([[0], np.cumsum([p[2] - p[1] for p in pieces])]).astype(np.int64)
    return shards, firsts, offsets


def _ratio_segments(shards: List[dict], train_ratio: float, val_ratio: float) -> Dict[str, Segments]:
    """Consecutive row ranges of the whole data in file order: train, then val, then test."""
    if not (0 <= train_ratio and 0 <= val_ratio and train_ratio + val_ratio <= 1):
        raise ValueError(f"data.train_ratio={train_ratio}, data.val_ratio={val_ratio}: need both >= 0 and sum <= 1")
    total = sum(s["rows"] for s in shards)
    n_train = int(total * train_ratio)
    n_val = int(total * val_ratio)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, total)}
    result = {}
    for split, (lo, hi) in bounds.items():
        pieces, start = [], 0
        for shard in shards:
            first, stop = max(lo - start, 0), min(hi - start, shard["rows"])
            if first < stop:
                pieces.append((shard["index"], first, stop))
            start += shard["rows"]
        result[split] = _segments(pieces)
    return result


def _day_segments(shards: List[dict], days: Dict[str, Sequence[int]], path: str) -> Dict[str, Segments]:
    """Each split is the listed days' shards, in day order."""
    present = sorted({s["day"] for s in shards if s["day"] is not None})
    if not present:
        raise ValueError(f"data.split_by=day, but {path} was not made from day_N files; use split_by=ratio")
    listed = [day for chosen in days.values() for day in chosen]
    if len(listed) != len(set(listed)):
        raise ValueError(f"data.train_days, val_days and test_days overlap: {dict(days)}")
    result = {}
    for split, chosen in days.items():
        missing = sorted(set(chosen) - set(present))
        if missing:
            raise ValueError(f"data.{split}_days names days {missing} that {path} does not hold (it has {present})")
        pieces = [(s["index"], 0, s["rows"]) for day in chosen for s in shards if s["day"] == day]
        result[split] = _segments(pieces)
    return result


def _preprocessed_segments(shards: List[dict], path: str) -> Dict[str, Segments]:
    """Each split is the shards preprocessing wrote for it, in order."""
    if any("split" not in s for s in shards):
        raise ValueError(f"data.split_by=preprocessed, but {path} has shards without a split; use split_by=ratio")
    return {split: _segments([(s["index"], 0, s["rows"]) for s in shards if s["split"] == split]) for split in SPLITS}

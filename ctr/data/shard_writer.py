"""Writes the shards of any source (layout: `ctr.data.shard_format`): the output's
preparation, the input fingerprint, the resume state, the shard files and the common part
of `meta.json`; `ctr.data.parallel_preprocess` runs the pass over a source's parts.

A source (`ShardInput`: Criteo TSV in `ctr.data.preprocess`, schema-described CSV in
`ctr.data.tabular`) supplies only its blocks of rows, file by file, and its own
statistics. Every file is written under a temporary name and renamed when complete
(`ctr.atomic`); after each shard the running state is saved (`progress.npz`), so a
resumable source run again after an interruption continues from the last complete
shard. `meta.json` is written last: until it exists, readers refuse the directory.
"""

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type

import numpy as np

from ctr.atomic import write_atomic, write_json_atomic
from ctr.data.shard_format import (
    FORMAT, META_FILE, InvalidShardDirectory, data_sha256, parse_meta, read_meta, shard_file,
)
from ctr.data.sketches import HeavyHitters, HyperLogLog

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.npz"
# A parallel run's layout (`ctr.data.parallel_preprocess`): each part's shards and progress record in
# progress.parts/<part>/, its done mark and first-pass scan, the run's fingerprint and plan; listed here so
# that `written_files` covers them.
PARTS_DIR = "progress.parts"
PART_DIGITS = 5
PART_DONE = "done.json"
PART_SCAN = "scan.npz"
PARTS_FINGERPRINT = "fingerprint"
PARTS_PLAN = "plan.npz"
# Memory stays near 270 B × SHARD_ROWS (the Criteo shard being filled) + 4 KB × CHUNK_ROWS
# (the lines being parsed), whatever the input size: about 135 MB with these values.
SHARD_ROWS = 262_144
CHUNK_ROWS = 16_384
EXAMPLES_KEPT = 20
EXAMPLE_CHARS = 500  # a bad row's problem, as errors and meta.json quote it


class BadRowPolicy(StrEnum):
    """`on_bad_row`: error stops at the first malformed row, naming file, line and problem;
    skip drops it and counts it (by kind) in meta.json and the log."""

    error = "error"
    skip = "skip"


class BadLine(NamedTuple):
    """A malformed row: its 1-based line number, a short kind for counting, and the problem in words."""

    line: int
    kind: str
    message: str


@dataclass
class Block:
    """Rows read from one file: every column by name ("label" included), the empty values
    per dense and sparse column before filling, the dense columns' sum, and the split the
    source assigned (None where the reader cuts splits). `closes_split`: the split's last
    block of the file, after which its buffered rows are written as a shard."""

    columns: Dict[str, np.ndarray]
    missing: np.ndarray
    dense_sum: np.ndarray
    split: Optional[str] = None
    closes_split: bool = False


@dataclass
class ShardState:
    """Everything needed to continue: the shards written, the running statistics, and the
    source's own position and statistics (`source`, JSON values)."""

    fingerprint: str
    num_dense: int
    num_sparse: int
    source: Dict[str, Any] = field(default_factory=dict)
    columns: List[str] = field(default_factory=list)  # the files each shard has, so overwrite finds them
    rows: int = 0
    shards: List[dict] = field(default_factory=list)
    bad: Dict[str, int] = field(default_factory=dict)
    examples: List[str] = field(default_factory=list)
    positives: int = 0
    missing: List[int] = field(default_factory=list)
    dense_sum: List[float] = field(default_factory=list)
    hll: Optional[HyperLogLog] = None
    heavy: Optional[HeavyHitters] = None

    def __post_init__(self) -> None:
        self.hll = self.hll or HyperLogLog(self.num_sparse)
        self.heavy = self.heavy or HeavyHitters(self.num_sparse)
        self.missing = self.missing or [0] * (self.num_dense + self.num_sparse)
        self.dense_sum = self.dense_sum or [0.0] * self.num_dense

    _SCALARS = ("source", "rows", "shards", "bad", "examples", "positives", "missing", "dense_sum")

    def load(self, out: Path) -> None:
        """Continues from the state saved in `out`, if any."""
        path = out / PROGRESS_FILE
        if path.exists():
            saved = np.load(path)
            scalars = json.loads(str(saved["scalars"]))
            if set(scalars) != set(self._SCALARS):
                raise FileExistsError(f"{path} was saved by another version of ctr; pass overwrite=true to start over")
            for name, value in scalars.items():
                setattr(self, name, value)
            self.hll.registers = saved["hll"]
            self.heavy.load_state({k[len("heavy_"):]: saved[k] for k in saved.files if k.startswith("heavy_")})

    def save(self, out: Path) -> None:
        scalars = json.dumps({name: getattr(self, name) for name in self._SCALARS})
        arrays = {f"heavy_{k}": v for k, v in self.heavy.state().items()}
        write_atomic(
            out / PROGRESS_FILE,
            lambda f: np.savez(f, fingerprint=self.fingerprint, scalars=scalars, columns=json.dumps(self.columns),
                               hll=self.hll.registers, **arrays),
        )

    def count(self, block: Block, sparse: Sequence[str]) -> None:
        """Adds a block's missing values, dense sums and sparse ids to the running statistics."""
        self.missing = (np.array(self.missing) + block.missing).tolist()
        self.dense_sum = (np.array(self.dense_sum) + block.dense_sum).tolist()
        rows = len(block.columns["label"])
        ids = np.stack([block.columns[name] for name in sparse], 1) if sparse else np.zeros((rows, 0), np.int64)
        self.hll.update(ids)
        self.heavy.update(ids)

    def record_bad(self, path: Path, bad: BadLine, policy: BadRowPolicy, error: Type[Exception], hint: str = "") -> None:
        """Applies the bad-row policy: fails naming file, line and problem, or counts the row."""
        message = capped(bad.message)
        if policy == BadRowPolicy.error:
            raise error(f"{path}:{bad.line}: {message}{hint}")
        self.bad[bad.kind] = self.bad.get(bad.kind, 0) + 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(f"{path}:{bad.line}: {message}")


def capped(message: str, limit: int = EXAMPLE_CHARS) -> str:
    """`message` cut to `limit` characters, saying how long it was: a bad row's text can be megabytes.

    >>> capped("x" * 10, 4)
    'xxxx... (10 characters in all)'
    """
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message):,} characters in all)"


FileBlocks = Tuple[str, Optional[int], Iterator[Block]]
Room = Callable[[Optional[str]], int]


class ShardInput(ABC):
    """What a source tells the writer: its inputs and settings (fingerprinted), its columns,
    its blocks file by file, and its own checks and `meta.json` keys."""

    name: str  # meta.json "source"
    input: str  # meta.json "input"
    description: str  # the input, as errors name it
    inputs: List[Path]  # every file whose change makes the shards stale
    settings: dict  # every setting that changes the output
    dense: List[str]
    sparse: List[str]  # single-id columns, whose distinct ids are estimated
    columns: List[str]  # every column written, "label" first
    splits: Sequence[Optional[str]] = (None,)
    resumable: bool = False
    error: Type[Exception] = ValueError

    def start(self) -> Dict[str, Any]:
        """The source's own resume position and statistics before any row (`ShardState.source`)."""
        return {}

    @abstractmethod
    def files(self, state: ShardState, room: Room) -> Iterator[FileBlocks]:
        """(file name, day or None, its blocks) per input file, from the saved position.

        A file's shards are written once its blocks are consumed, before the next file is
        asked for. A resumable source cuts each block to `room(split)`, the rows left in the
        shard being filled, so that a saved state never lies inside a buffered block.
        """

    def check(self, state: ShardState) -> None:
        """Fails on a result the source cannot use (past having no rows at all)."""

    @abstractmethod
    def meta(self, state: ShardState) -> dict:
        """The source's own meta.json keys, merged into the common ones (nested keys too)."""


def write_meta(out: Path, source: ShardInput, fingerprint: str, state: ShardState, rows_this_run: int,
               seconds: float, **last_run: Any) -> dict:
    """Checks the finished state, writes meta.json (last, so the directory becomes valid) and returns it;
    `last_run` adds figures of this run (timings: the only part that differs between identical runs)."""
    if not state.rows:
        raise source.error(f"{source.description}: no valid rows ({sum(state.bad.values())} bad rows skipped); "
                           "nothing written")
    source.check(state)
    meta = _merged(_common_meta(source, fingerprint, state), source.meta(state))
    meta["last_run"] = {"rows": rows_this_run, "seconds": round(seconds, 3),
                        "rows_per_second": round(rows_this_run / max(seconds, 1e-9)), **last_run}
    write_json_atomic(out / META_FILE, meta)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    _log_summary(out, meta)
    return meta


def write_blocks(source: ShardInput, state: ShardState, writers: Dict[Optional[str], "ShardWriter"],
                 on_rows: Callable[[int], Any]) -> None:
    """Counts and writes every block the source yields from `state` on, file by file (each
    file's shards flushed before the next); `on_rows(n)` follows the progress."""
    for file, day, blocks in source.files(state, lambda split: writers[split].room()):
        for block in blocks:
            rows = len(block.columns["label"])
            if rows:
                state.count(block, source.sparse)
                writers[block.split].add(block.columns, file, day)
                on_rows(rows)
            if block.closes_split:
                writers[block.split].flush(file, day)
        for writer in writers.values():
            writer.flush(file, day)


def input_fingerprint(paths: Sequence[Path], settings: dict) -> str:
    """Identifies the input files (name, size, mtime) and every setting that changes the output."""
    listing = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps([FORMAT, listing, settings]).encode()).hexdigest()


def prepare_output(out: Path, fingerprint: str, overwrite: bool) -> Optional[dict]:
    """Returns the existing meta when `out` is already complete for this input; else readies `out`.

    `overwrite` removes only the files a previous run lists as its own (`written_files`);
    anything else in `out` stays, and then `out` is refused as not empty.
    """
    if overwrite and out.exists():
        # meta.json goes first, so the directory is invalid while anything else is removed.
        remove_files(out, written_files(out))
    out.mkdir(parents=True, exist_ok=True)
    if (out / META_FILE).exists():
        meta = read_meta(out)
        if meta.get("fingerprint") == fingerprint:
            return meta
        raise FileExistsError(f"{out} holds shards of another input or configuration; pass overwrite=true to replace them")
    progress = out / PROGRESS_FILE
    if progress.exists():
        if str(np.load(progress)["fingerprint"]) != fingerprint:
            raise FileExistsError(
                f"{out} holds an unfinished run over another input or configuration; pass overwrite=true to start over"
            )
    elif any(out.iterdir()):
        others = sorted(p.name for p in out.iterdir())
        listing = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise FileExistsError(f"{out} is not empty and holds no shards of ctr's (it holds {listing}); choose an "
                              "empty directory (overwrite=true removes only the files a previous run listed)")
    for stale in written_files(out):
        if stale.suffix == ".tmp":
            stale.unlink(missing_ok=True)
    return None


def written_files(out: Path) -> List[Path]:
    """The files a previous run wrote in `out`, as its records list them: meta.json first, then
    the progress record, every listed shard's column files, the next shard's (an interrupted
    write), each one's temporary name (`ctr.atomic`), and the parts layout of a parallel run
    (`part_files`, and the shards an interrupted merge already moved into `out`)."""
    try:
        return _listed_files(out) + part_files(out) + _merged_part_shards(out)
    except (InvalidShardDirectory, KeyError, TypeError, ValueError, OSError) as error:
        raise FileExistsError(f"{out}: ctr cannot tell which files it wrote there ({error}), so it removes none; "
                              "remove them yourself or choose another output") from error


def part_files(out: Path) -> List[Path]:
    """What a parallel run's parts wrote under `out/progress.parts/`: its fingerprint and plan, and each
    part directory's listed files (`_listed_files`), scan and done mark."""
    parts = out / PARTS_DIR
    if not parts.is_dir():
        return []
    paths = [*_with_temporary(parts / PARTS_FINGERPRINT), *_with_temporary(parts / PARTS_PLAN)]
    for directory in _part_directories(out):
        paths += _listed_files(directory) + [*_with_temporary(directory / PART_DONE),
                                             *_with_temporary(directory / PART_SCAN)]
    return paths


def remove_files(out: Path, paths: Sequence[Path]) -> None:
    """Deletes `paths` (those present), then the parts layout's directories once they are empty:
    a directory that still holds anything (not ctr's) stays, and the output is then refused."""
    for path in paths:
        path.unlink(missing_ok=True)
    parts = out / PARTS_DIR
    for directory in _part_directories(out) + [parts]:
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def _part_directories(out: Path) -> List[Path]:
    parts = out / PARTS_DIR
    if not parts.is_dir():
        return []
    return sorted(d for d in parts.iterdir() if d.is_dir() and d.name.isdigit() and len(d.name) == PART_DIGITS)


def _merged_part_shards(out: Path) -> List[Path]:
    """The shards a merge moved from finished parts into `out` under their final indices, in part
    order, should it have been interrupted before writing meta.json (the merge starts only once
    every part is done)."""
    directories = _part_directories(out)
    if not directories or not all((d / PART_DONE).exists() for d in directories):
        return []
    paths, index = [], 0
    for directory in directories:
        listed, columns = _progress_listing(directory)
        for _ in listed:
            paths += [p for column in columns for p in _with_temporary(shard_file(out, index, column))]
            index += 1
    return paths


def _listed_files(directory: Path) -> List[Path]:
    """The files one directory's meta.json and progress record list (see `written_files`)."""
    names, shards = [], []
    meta_path, progress_path = directory / META_FILE, directory / PROGRESS_FILE
    if meta_path.exists():
        meta = parse_meta(meta_path)
        names.append(META_FILE)
        shards += [(shard["index"], meta["columns"]) for shard in meta["shards"]]
    if progress_path.exists():
        listed, columns = _progress_listing(directory)
        names.append(PROGRESS_FILE)
        shards += [(shard["index"], columns) for shard in listed] + [(len(listed), columns)]
    names += [shard_file(directory, index, column).name for index, columns in shards for column in columns]
    return [p for path in dict.fromkeys(directory / name for name in names) for p in _with_temporary(path)]


def _progress_listing(directory: Path) -> Tuple[List[dict], List[str]]:
    """The shards a progress record lists, and their column names."""
    path = directory / PROGRESS_FILE
    if not path.exists():
        return [], []
    saved = np.load(path)
    listed = json.loads(str(saved["scalars"]))["shards"]
    columns = json.loads(str(saved["columns"])) if "columns" in saved.files else (
        list(listed[0]["sha256"]) if listed else [])
    return listed, columns


def _with_temporary(path: Path) -> Tuple[Path, Path]:
    return path, path.with_name(path.name + ".tmp")


class ShardWriter:
    """Buffers up to `shard_rows` rows of the named columns; writes them as one shard and saves the state.

    `split` tags every shard it writes, for sources whose preprocessing decides the split.
    """

    def __init__(self, out: Path, columns: List[str], shard_rows: int, state: ShardState,
                 split: Optional[str] = None) -> None:
        self._out, self._columns, self._shard_rows, self._state = out, columns, shard_rows, state
        self._split = split
        self._blocks: List[Dict[str, np.ndarray]] = []

    def room(self) -> int:
        return self._shard_rows - sum(len(block["label"]) for block in self._blocks)

    def add(self, columns: Dict[str, np.ndarray], file: str, day: Optional[int]) -> None:
        """Buffers a block of rows (every column by name), writing each shard as it fills."""
        rows, start = len(columns["label"]), 0
        while start < rows:
            take = min(self.room(), rows - start)
            piece = {name: values[start:start + take] for name, values in columns.items()}
            self._blocks.append(piece)
            self._state.rows += take
            self._state.positives += int(piece["label"].sum())
            start += take
            if not self.room():
                self.flush(file, day)

    def flush(self, file: str, day: Optional[int] = None) -> None:
        """Writes the buffered rows as the next shard (if any), then saves the state."""
        rows = sum(len(block["label"]) for block in self._blocks)
        if not rows:
            return
        blocks, self._blocks = self._blocks, []
        index = len(self._state.shards)
        checksums = {}
        # One column at a time, so writing adds one column's copy to the buffered rows.
        for name in self._columns:
            values = np.concatenate([block[name] for block in blocks])
            write_atomic(shard_file(self._out, index, name), lambda f: np.save(f, values))
            checksums[name] = data_sha256(values)
        shard = {"index": index, "rows": rows, "file": file, "day": day, "sha256": checksums}
        if self._split is not None:
            shard["split"] = self._split
        self._state.shards.append(shard)
        self._state.save(self._out)
        log.info("shard %d: %d rows from %s", index, rows, file)


def _common_meta(source: ShardInput, fingerprint: str, state: ShardState) -> dict:
    rows = state.rows
    distinct = state.hll.estimates()
    num_dense = len(source.dense)
    return {
        "format": FORMAT,
        "source": source.name,
        "input": source.input,
        "fingerprint": fingerprint,
        "settings": source.settings,
        "label": "label",
        "dense": source.dense,
        "sparse": source.sparse,
        "columns": source.columns,
        "dtypes": {"label": "float32", "dense": "float32", "sparse": "int64"},
        "num_rows": rows,
        "shards": state.shards,
        "bad_rows": {"total": sum(state.bad.values()), "by_kind": state.bad, "examples": state.examples},
        "stats": {
            "dense": {name: {"missing": state.missing[j], "mean": state.dense_sum[j] / rows}
                      for j, name in enumerate(source.dense)},
            "sparse": {name: {"missing": state.missing[num_dense + j], "distinct_estimate": distinct[j]}
                       for j, name in enumerate(source.sparse)},
        },
    }


def _merged(common: dict, own: dict) -> dict:
    """`common` with `own`'s keys added, nested dictionaries merged key by key."""
    merged = dict(common)
    for key, value in own.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both else value
    return merged


def _log_summary(out: Path, meta: dict) -> None:
    bad = meta["bad_rows"]
    log.info("%s: %d rows in %d shards (this run: %d rows/s)", out, meta["num_rows"], len(meta["shards"]),
             meta["last_run"]["rows_per_second"])
    if bad["total"]:
        log.warning("skipped %d bad rows: %s; first: %s", bad["total"], bad["by_kind"], bad["examples"][:3])

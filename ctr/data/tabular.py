"""Delimited files (CSV/TSV) described by a schema (`ctr.data.schema`) → columnar shards.

Same skeleton, shard format and bad-row policy as the Criteo pass (`ctr.data.preprocess`):
one streaming pass over the main files, side tables held in memory as key → row, each
shard written for one split (read back with `ShardSource(split_by="preprocessed")`),
`meta.json` last. A light first pass reads only the main files' raw fields when the
split needs all rows first (the timestamp cut-off, or the keys to de-duplicate by).
Inputs this size are re-read from the start if interrupted.

Categorical ids: id = splitmix64(blake2b-64(namespace + "\\x1f" + value)) >> 1, where
blake2b-64 is the 8-byte BLAKE2b digest read little-endian and the namespace is the
feature's `table` (shared vocabulary) or its name; so a value gets the same id in every
feature of one table, and different ids across tables.
"""

import csv
import functools
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from ctr.data.criteo import BadLine
from ctr.data.ids import splitmix64, to_id
from ctr.atomic import write_json_atomic
from ctr.data.preprocess import ShardState, ShardWriter, input_fingerprint, prepare_output
from ctr.data.rows import BAG_PAD
from ctr.data.schema import DelimitedFileConfig, SchemaConfig, SparseConfig
from ctr.data.shard_format import FORMAT, META_FILE
from ctr.data.shards import SPLITS, ShardSource

log = logging.getLogger(__name__)

_POLICIES = ("error", "skip")
_SPLIT_BY = ("ratio", "timestamp", "files")
_NORMALIZE = ("none", "standardize", "minmax")


class CsvFormatError(ValueError):
    """Input or schema that cannot be read as configured; the message names the file and the setting."""


@functools.lru_cache(maxsize=1 << 20)
def _blake2b64(namespace: str, value: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{namespace}\x1f{value}".encode(), digest_size=8).digest(), "little")


def hash_ids(namespace: str, values: Sequence[str]) -> np.ndarray:
    """Stable non-negative int64 ids of string values in one namespace (see the module docstring).

    >>> hash_ids("genre", ["Action"]).tolist()
    [6255414212983130977]
    """
    keys = np.fromiter((_blake2b64(namespace, v) for v in values), dtype=np.uint64, count=len(values))
    return to_id(splitmix64(keys))


def as_schema(schema) -> SchemaConfig:
    """The schema as typed dataclasses, whether given as such, as a DictConfig or as a dict."""
    if isinstance(schema, SchemaConfig):
        return schema
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SchemaConfig), schema))


class _Table:
    """One delimited file: its column names, and its records with their line numbers."""

    def __init__(self, path: Path, spec: DelimitedFileConfig, setting: str) -> None:
        self.path, self.spec, self.setting = path, spec, setting
        if not path.is_file():
            raise CsvFormatError(f"{path} does not exist (data.schema{setting})")
        if spec.header:
            first = next(self._records(), None)
            if first is None:
                raise CsvFormatError(f"{path} is empty (data.schema{setting}.header=true expects a header line)")
            self.columns = first[1]
        elif spec.columns:
            self.columns = list(spec.columns)
        else:
            raise CsvFormatError(f"{path}: data.schema{setting}.header=false needs data.schema{setting}.columns")

    def _records(self) -> Iterator[Tuple[int, List[str]]]:
        with open(self.path, "rb") as stream:
            reader = csv.reader(self._decoded(stream), delimiter=self.spec.delimiter)
            for fields in reader:
                if fields:
                    yield reader.line_num, fields

    def _decoded(self, stream) -> Iterator[str]:
        """Lines decoded one at a time, so that an encoding error names its line."""
        encoding = self.spec.encoding
        for number, raw in enumerate(stream, 1):
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as error:
                raise CsvFormatError(f"{self.path}:{number}: not valid {encoding} "
                                     f"(data.schema{self.setting}.encoding={encoding!r}): {error.reason}") from error

    def records(self) -> Iterator[Tuple[int, List[str]]]:
        """Data records (the header skipped)."""
        records = self._records()
        if self.spec.header:
            next(records, None)
        return records

    def index(self, column: str, setting: str) -> int:
        if column not in self.columns:
            raise CsvFormatError(
                f"{self.path}: data.schema.{setting} names column {column!r}, which is not among its columns {self.columns}"
            )
        return self.columns.index(column)


@dataclass
class _SideTable:
    """A joined table: its rows by key, and how many main rows found no match."""

    table: _Table
    on: int
    rows: Dict[str, List[str]]
    max_unmatched_fraction: float
    unmatched: int = 0
    empty: List[str] = field(default_factory=list)


class _Layout:
    """Where each column the schema names is found (main file or a side table), checked up front."""

    def __init__(self, schema: SchemaConfig, main: _Table, root: Path) -> None:
        self.main = main
        self.sides: List[_SideTable] = []
        self.sources: Dict[str, Tuple[int, int]] = {c: (-1, i) for i, c in enumerate(main.columns)}
        for j, join in enumerate(schema.joins):
            table = _Table(root / join.path, join, f".joins[{j}]")
            key = table.index(join.key, f"joins[{j}].key")
            on = main.index(join.join_column, f"joins[{j}].join_column")
            rows = {}
            for _, fields in table.records():
                rows.setdefault(fields[key] if key < len(fields) else "", fields)
            self.sides.append(_SideTable(table, on, rows, join.max_unmatched_fraction, empty=[""] * len(table.columns)))
            for i, column in enumerate(table.columns):
                if column != join.key:
                    if column in self.sources:
                        raise CsvFormatError(f"{table.path}: column {column!r} of data.schema.joins[{j}] is already a column "
                                             f"of the rows or of an earlier join; rename it with data.schema.joins[{j}].columns")
                    self.sources[column] = (j, i)

    def locate(self, column: str, setting: str) -> Tuple[int, int]:
        if column not in self.sources:
            raise CsvFormatError(
                f"{self.main.path}: data.schema.{setting} names column {column!r}, which is neither in its header "
                f"{self.main.columns} nor in a joined table"
            )
        return self.sources[column]

    def joined(self, fields: List[str]) -> List[List[str]]:
        """The main record, then each side table's matching row (empty values when none matches)."""
        parts = [fields]
        for side in self.sides:
            row = side.rows.get(fields[side.on])
            if row is None:
                side.unmatched += 1
                row = side.empty
            parts.append(row)
        return parts


def _get(parts: List[List[str]], where: Tuple[int, int]) -> str:
    row = parts[where[0] + 1]
    return row[where[1]] if where[1] < len(row) else ""


class _Features:
    """Turns joined records into column values: label, dense, single ids and bags."""

    def __init__(self, schema: SchemaConfig, layout: _Layout) -> None:
        self.schema = schema
        self.label = layout.locate(schema.label.column, "label.column")
        self.dense = [layout.locate(d.column, f"dense[{j}].column") for j, d in enumerate(schema.dense)]
        for j, d in enumerate(schema.dense):
            if d.normalize not in _NORMALIZE:
                raise CsvFormatError(f"data.schema.dense[{j}].normalize={d.normalize!r}: expected one of {list(_NORMALIZE)}")
        self.single = [s for s in schema.sparse if not _is_bag(s)]
        self.bags = [s for s in schema.sparse if _is_bag(s)]
        index = {id(s): j for j, s in enumerate(schema.sparse)}
        self.columns = {id(s): [layout.locate(c, f"sparse[{index[id(s)]}].columns") for c in s.columns]
                        for s in schema.sparse}
        self.bag_lengths = {s.name: s.max_length or len(s.columns) for s in self.bags}
        for s in self.bags:
            if s.delimiter and not s.max_length:
                raise CsvFormatError(f"data.schema.sparse[{index[id(s)]}] ({s.name}) splits by a delimiter; "
                                     "set its max_length")
        names = [d.column for d in schema.dense] + [s.name for s in schema.sparse]
        if len(set(names)) != len(names):
            raise CsvFormatError(f"data.schema: feature names repeat: {names}")

    def parse(self, parts: List[List[str]]) -> Tuple[float, List[float], List[str], List[List[str]], List[bool]]:
        """(label, dense values, single values, bag members, dense missing flags); ValueError names the problem."""
        label_rule = self.schema.label
        raw = _get(parts, self.label)
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"label column {label_rule.column} is {raw!r}, not a number") from None
        if label_rule.threshold is None:
            if value not in (0.0, 1.0):
                raise ValueError(f"label column {label_rule.column} is {raw!r}, not 0 or 1 (set data.schema.label.threshold)")
            label = value
        else:
            label = float(value >= label_rule.threshold)
        dense, missing = [], []
        for spec, where in zip(self.schema.dense, self.dense):
            raw = _get(parts, where)
            missing.append(raw == "")
            try:
                x = spec.fill if raw == "" else float(raw)
            except ValueError:
                raise ValueError(f"dense column {spec.column} is {raw!r}, not a number") from None
            dense.append(float(np.log1p(max(x, 0.0))) if spec.log1p else x)
        single = [self._category(s, _get(parts, self.columns[id(s)][0])) for s in self.single]
        bags = [self._members(s, parts) for s in self.bags]
        return label, dense, single, bags, missing

    def _category(self, spec: SparseConfig, raw: str) -> str:
        if spec.boundaries is None or raw == "":
            return raw
        try:
            return f"bucket {int(np.searchsorted(spec.boundaries, float(raw), side='right'))}"
        except ValueError:
            raise ValueError(f"column {spec.columns[0]} of bucketised feature {spec.name} is {raw!r}, not a number") from None

    def _members(self, spec: SparseConfig, parts: List[List[str]]) -> List[str]:
        values = [_get(parts, where) for where in self.columns[id(spec)]]
        if spec.flags:
            return [column for column, v in zip(spec.columns, values) if v.strip() not in ("", "0")]
        if spec.delimiter:
            values = [member for v in values for member in v.split(spec.delimiter)]
        return [self._category(spec, v.strip()) for v in values if v.strip()]


def _is_bag(spec: SparseConfig) -> bool:
    return len(spec.columns) > 1 or bool(spec.delimiter) or spec.flags


def _namespace(spec: SparseConfig) -> str:
    return spec.table or spec.name


@dataclass
class _Block:
    """Rows of one split being collected, as Python lists until `columns` packs them."""

    labels: List[float] = field(default_factory=list)
    dense: List[List[float]] = field(default_factory=list)
    single: List[List[str]] = field(default_factory=list)
    bags: List[List[List[str]]] = field(default_factory=list)

    def columns(self, features: _Features, truncated: Dict[str, int]) -> Dict[str, np.ndarray]:
        n = len(self.labels)
        dense = np.array(self.dense, np.float32).reshape(n, len(features.schema.dense))
        out = {"label": np.array(self.labels, np.float32),
               **{d.column: dense[:, j] for j, d in enumerate(features.schema.dense)}}
        for j, spec in enumerate(features.single):
            out[spec.name] = hash_ids(_namespace(spec), [row[j] for row in self.single])
        for j, spec in enumerate(features.bags):
            width = features.bag_lengths[spec.name]
            members = [row[j] for row in self.bags]
            truncated[spec.name] += sum(len(m) > width for m in members)
            lengths = np.array([min(len(m), width) for m in members], np.int64)
            ids = hash_ids(_namespace(spec), [v for m in members for v in m[:width]])
            bag = np.full((n, width), BAG_PAD, np.int64)
            bag[np.arange(width)[None, :] < lengths[:, None]] = ids
            out[spec.name] = bag
        return out


@dataclass
class _DenseStats:
    """Running sums of the train rows' dense values, for the normalisation applied on read."""

    count: int = 0
    total: Optional[np.ndarray] = None
    squares: Optional[np.ndarray] = None
    low: Optional[np.ndarray] = None
    high: Optional[np.ndarray] = None

    def update(self, dense: np.ndarray) -> None:
        if not len(dense):
            return
        values = dense.astype(np.float64)
        if self.total is None:
            self.total, self.squares = values.sum(0), (values**2).sum(0)
            self.low, self.high = values.min(0), values.max(0)
        else:
            self.total += values.sum(0)
            self.squares += (values**2).sum(0)
            self.low, self.high = np.minimum(self.low, values.min(0)), np.maximum(self.high, values.max(0))
        self.count += len(values)

    def transform(self, schema: SchemaConfig) -> Dict[str, List[float]]:
        """Per dense column: value ← (value - shift) · scale."""
        shift, scale = [], []
        for j, spec in enumerate(schema.dense):
            if spec.normalize == "none" or not self.count:
                shift.append(0.0), scale.append(1.0)
            elif spec.normalize == "standardize":
                mean = self.total[j] / self.count
                std = float(np.sqrt(max(self.squares[j] / self.count - mean**2, 0.0)))
                shift.append(float(mean)), scale.append(1.0 / std if std > 0 else 1.0)
            else:
                span = float(self.high[j] - self.low[j])
                shift.append(float(self.low[j])), scale.append(1.0 / span if span > 0 else 1.0)
        return {"shift": shift, "scale": scale}


class _Splitter:
    """Assigns each record of the main files to a split, and drops test rows seen in training."""

    def __init__(self, schema: SchemaConfig, main_files: List[Path], test_files: List[Path], main: _Table) -> None:
        split = schema.split
        if split.by not in _SPLIT_BY:
            raise CsvFormatError(f"data.schema.split.by={split.by!r}: expected one of {list(_SPLIT_BY)}")
        if split.by == "files" and not test_files:
            raise CsvFormatError("data.schema.split.by=files needs data.schema.test_files")
        if split.by != "files" and test_files:
            raise CsvFormatError(f"data.schema.test_files is set, but data.schema.split.by={split.by!r}; use by: files")
        if not (0 <= split.test_ratio < 1 and 0 <= split.val_ratio and split.test_ratio + split.val_ratio < 1):
            raise CsvFormatError(f"data.schema.split: test_ratio={split.test_ratio}, val_ratio={split.val_ratio}: "
                                 "need both >= 0 and their sum < 1")
        self.split, self.test_files = split, set(test_files)
        self.timestamp = main.index(split.timestamp_column, "split.timestamp_column") if split.by == "timestamp" else None
        self.key = [main.index(c, "split.dedup_key") for c in split.dedup_key]
        self.cutoff: Optional[float] = None
        self.seen: set = set()
        self.duplicates = 0
        if self.timestamp is not None or self.key:
            self._scan(main_files, main)

    def _scan(self, files: List[Path], main: _Table) -> None:
        """First pass: the timestamp cut-off, then the keys of every non-test row."""
        records = [(path, i, fields) for path in files
                   for i, (_, fields) in enumerate(_Table(path, main.spec, "").records())]
        if self.timestamp is not None:
            stamps = np.array([_number(f, self.timestamp) for _, _, f in records], np.float64)
            valid = np.sort(stamps[~np.isnan(stamps)])
            if not len(valid):
                raise CsvFormatError(f"{files[0]}: data.schema.split.timestamp_column={self.split.timestamp_column!r} "
                                     "holds no numbers")
            self.cutoff = float(valid[min(int(len(valid) * (1 - self.split.test_ratio)), len(valid) - 1)])
        if self.key:
            rngs: Dict[Path, np.random.Generator] = {}
            for path, _, fields in records:
                rng = rngs.setdefault(path, self._rng(files.index(path)))
                if self._draw(path, fields, rng.random()) != "test":
                    self.seen.add(self._key(fields))

    def _rng(self, file_index: int) -> np.random.Generator:
        return np.random.default_rng([self.split.seed, file_index])

    def files(self, files: List[Path]) -> Iterator[Tuple[Path, np.random.Generator]]:
        for i, path in enumerate(files):
            yield path, self._rng(i)

    def _key(self, fields: List[str]) -> Tuple[str, ...]:
        return tuple(fields[i] if i < len(fields) else "" for i in self.key)

    def _draw(self, path: Path, fields: List[str], u: float) -> str:
        split = self.split
        if split.by == "files":
            test = path in self.test_files
        elif split.by == "timestamp":
            stamp = _number(fields, self.timestamp)
            test = not np.isnan(stamp) and stamp >= self.cutoff
        else:
            test, u = u < split.test_ratio, u - split.test_ratio
        if test:
            return "test"
        return "val" if u < split.val_ratio else "train"

    def assign(self, path: Path, fields: List[str], u: float) -> Optional[str]:
        """The record's split, or None for a test row whose key is also in a non-test row."""
        split = self._draw(path, fields, u)
        if split == "test" and self.key and self._key(fields) in self.seen:
            self.duplicates += 1
            return None
        return split


def _number(fields: List[str], index: int) -> float:
    try:
        return float(fields[index])
    except (ValueError, IndexError):
        return float("nan")


def preprocess_csv(
    schema,
    output: str,
    on_bad_row: str = "error",
    shard_rows: int = 262_144,
    chunk_rows: int = 16_384,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> dict:
    """Turns the files `schema` describes into shards in `output`; returns the meta.json content.

    `on_bad_row`: "error" stops at the first malformed record, naming file, line and
    problem; "skip" drops it and counts it in meta.json. The schema's columns, side tables
    and split settings are checked before any row is written.
    """
    started = time.perf_counter()
    schema = as_schema(schema)
    if on_bad_row not in _POLICIES:
        raise ValueError(f"on_bad_row={on_bad_row!r}: expected one of {list(_POLICIES)}")
    if shard_rows < 1 or chunk_rows < 1:
        raise ValueError(f"shard_rows={shard_rows}, chunk_rows={chunk_rows}: both must be >= 1")
    if not schema.files:
        raise CsvFormatError("data.schema.files is empty: list the files to read (relative to data.schema.root)")
    root = Path(schema.root)
    train_files = [root / f for f in schema.files]
    test_files = [root / f for f in schema.test_files]
    main_files = train_files + test_files  # training files first: their keys de-duplicate the test rows
    main = _Table(main_files[0], schema, "")
    layout = _Layout(schema, main, root)
    features = _Features(schema, layout)
    splitter = _Splitter(schema, main_files, test_files, main)
    settings = {"schema": asdict(schema), "on_bad_row": on_bad_row, "shard_rows": shard_rows}
    inputs = main_files + [side.table.path for side in layout.sides]
    fingerprint = input_fingerprint(inputs, settings)
    out = Path(output)
    done = prepare_output(out, fingerprint, overwrite)
    if done is not None:
        log.info("%s already holds these shards (%d rows); nothing to do", out, done["num_rows"])
        return done

    state = ShardState(fingerprint, len(schema.dense), len(features.single))
    columns = ["label", *(d.column for d in schema.dense), *(s.name for s in features.single),
               *(s.name for s in features.bags)]
    writers = {split: ShardWriter(out, columns, shard_rows, state, split) for split in SPLITS}
    blocks = {split: _Block() for split in SPLITS}
    stats, truncated = _DenseStats(), {s.name: 0 for s in features.bags}
    split_rows = {split: 0 for split in SPLITS}
    split_positives = {split: 0 for split in SPLITS}
    width = len(main.columns)
    bar = tqdm(unit=" rows", unit_scale=True, disable=not progress_bar, desc="preprocess")

    def emit(split: str, path: Path) -> None:
        block, blocks[split] = blocks[split], _Block()
        if not block.labels:
            return
        cols = block.columns(features, truncated)
        ids = np.stack([cols[s.name] for s in features.single], 1) if features.single else np.zeros((len(block.labels), 0), np.int64)
        state.hll.update(ids)
        state.heavy.update(ids)
        dense = np.array(block.dense, np.float64).reshape(len(block.labels), len(schema.dense))
        if split == "train":
            stats.update(dense)
        state.dense_sum = (np.array(state.dense_sum) + dense.sum(0)).tolist()
        split_rows[split] += len(block.labels)
        split_positives[split] += int(sum(block.labels))
        writer = writers[split]
        start = 0
        while start < len(block.labels):
            take = min(writer.room(), len(block.labels) - start)
            writer.add({name: values[start:start + take] for name, values in cols.items()})
            start += take
            if not writer.room():
                writer.flush(path.name)

    for path, rng in splitter.files(main_files):
        table = _Table(path, schema, "")
        if table.columns != main.columns:
            raise CsvFormatError(f"{path}: header {table.columns} differs from {main_files[0]}'s {main.columns}")
        for line, fields in table.records():
            split = splitter.assign(path, fields, rng.random())
            problem = None
            if len(fields) != width:
                problem = BadLine(line, "field count", f"{len(fields)} fields, expected {width}")
            elif split is None:
                continue
            else:
                try:
                    label, dense, single, bags, missing = features.parse(layout.joined(fields))
                except ValueError as error:
                    problem = BadLine(line, "value", str(error))
            if problem is not None:
                if on_bad_row == "error":
                    raise CsvFormatError(f"{path}:{line}: {problem.message} (on_bad_row=error; on_bad_row=skip drops such rows)")
                state.record_bad(path, problem)
                continue
            block = blocks[split]
            block.labels.append(label), block.dense.append(dense), block.single.append(single), block.bags.append(bags)
            state.missing = [m + x for m, x in zip(state.missing, missing + [v == "" for v in single])]
            bar.update(1)
            if len(block.labels) >= chunk_rows:
                emit(split, path)
        for split in SPLITS:
            emit(split, path)
            writers[split].flush(path.name)
    bar.close()
    _check(schema, main_files, layout, state, split_rows, split_positives)
    meta = _meta(schema, features, main_files, layout, fingerprint, settings, state, stats, truncated,
                 split_rows, split_positives, splitter)
    seconds = time.perf_counter() - started
    meta["last_run"] = {"rows": state.rows, "seconds": round(seconds, 3), "rows_per_second": round(state.rows / max(seconds, 1e-9))}
    write_json_atomic(out / META_FILE, meta)
    for stale in out.glob("progress*"):
        stale.unlink()
    log.info("%s: %d rows in %d shards (%s) in %.1f s", out, state.rows, len(state.shards), split_rows, seconds)
    return meta


def _check(schema: SchemaConfig, files: List[Path], layout: _Layout, state: ShardState,
           split_rows: Dict[str, int], split_positives: Dict[str, int]) -> None:
    """Fails on an unusable result: no rows, joins missing too often, or a label with one class."""
    listed = ", ".join(str(f) for f in files)
    if not state.rows:
        raise CsvFormatError(f"{listed}: no valid rows ({sum(state.bad.values())} bad rows skipped); nothing written")
    looked_up = state.rows + sum(state.bad.values())
    for j, side in enumerate(layout.sides):
        fraction = side.unmatched / max(looked_up, 1)
        if fraction > side.max_unmatched_fraction:
            raise CsvFormatError(
                f"{side.table.path}: {side.unmatched} of {looked_up} rows ({fraction:.1%}) of {listed} have no match "
                f"for data.schema.joins[{j}].join_column={schema.joins[j].join_column!r}, more than "
                f"data.schema.joins[{j}].max_unmatched_fraction={side.max_unmatched_fraction}"
            )
    positives, rows = split_positives["train"], split_rows["train"]
    if positives in (0, rows):
        rule = schema.label
        raise CsvFormatError(
            f"{listed}: data.schema.label (column={rule.column!r}, threshold={rule.threshold}) makes every one of the "
            f"{rows} train rows {int(positives > 0)}; a click model needs both classes"
        )


def _meta(schema: SchemaConfig, features: _Features, files: List[Path], layout: _Layout, fingerprint: str,
          settings: dict, state: ShardState, stats: _DenseStats, truncated: Dict[str, int],
          split_rows: Dict[str, int], split_positives: Dict[str, int], splitter: _Splitter) -> dict:
    dense = [d.column for d in schema.dense]
    single = [s.name for s in features.single]
    bags = [s.name for s in features.bags]
    shared: Dict[str, List[str]] = {}
    for spec in schema.sparse:
        if spec.table:
            shared.setdefault(spec.table, []).append(spec.name)
    distinct = state.hll.estimates()
    return {
        "format": FORMAT,
        "source": "csv",
        "input": str(schema.root),
        "files": [{"name": str(f), "bytes": f.stat().st_size} for f in files],
        "fingerprint": fingerprint,
        "settings": settings,
        "label": "label",
        "dense": dense,
        "sparse": single,
        "bags": bags,
        "bag_lengths": features.bag_lengths,
        "shared_tables": shared,
        "dense_transform": stats.transform(schema),
        "columns": ["label", *dense, *single, *bags],
        "dtypes": {"label": "float32", "dense": "float32", "sparse": "int64", "bags": f"int64, padded with {BAG_PAD}"},
        "num_rows": state.rows,
        "shards": state.shards,
        "bad_rows": {"total": sum(state.bad.values()), "by_kind": state.bad, "examples": state.examples},
        "splits": {s: {"rows": split_rows[s], "positives": split_positives[s]} for s in SPLITS},
        "test_rows_deduplicated": splitter.duplicates,
        "timestamp_cutoff": splitter.cutoff,
        "joins": [{"path": str(side.table.path), "unmatched_rows": side.unmatched} for side in layout.sides],
        "stats": {
            "dense": {name: {"missing": state.missing[j], "mean": state.dense_sum[j] / state.rows}
                      for j, name in enumerate(dense)},
            "sparse": {name: {"missing": state.missing[len(dense) + j], "distinct_estimate": distinct[j]}
                       for j, name in enumerate(single)},
            "bags_truncated": truncated,
        },
    }


def csv_shards(path: str, schema, shuffle_buffer: int = 65536, seed: int = 0, verify_checksums: bool = False) -> ShardSource:
    """The RowSource of `data=<csv data set>`: its shards, split as preprocessing assigned the rows.

    Refuses shards written from another schema, so a changed schema is never trained on stale shards.
    """
    source = ShardSource(path, split_by="preprocessed", shuffle_buffer=shuffle_buffer, seed=seed,
                         verify_checksums=verify_checksums)
    written = source.meta.get("settings", {}).get("schema")
    if written != json.loads(json.dumps(asdict(as_schema(schema)))):
        raise CsvFormatError(f"{path} was not written from this data.schema; run launch/preprocess.py "
                             "data=<this data set> overwrite=true")
    return source

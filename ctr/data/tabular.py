"""Delimited files (CSV/TSV) described by a schema (`ctr.data.schema`) → columnar shards.

The schema's source for the parted shard writer (`ctr.data.parallel_preprocess`): the main
files in parts, side tables held in memory as key → row, each shard written for one split
(read back with `ShardSource(split_by="preprocessed")`). A light first pass over the parts
reads the raw fields that every record's split depends on (`_Splitter`); merged in part
order, it plans the splits; then each part is streamed into shards, by any number of
workers, with the same output whatever their number (`_CsvInput`).

Categorical ids: id = splitmix64(blake2b-64(namespace + "\\x1f" + value)) >> 1, where
blake2b-64 is the 8-byte BLAKE2b digest read little-endian and the namespace is the
feature's `table` (shared vocabulary) or its name; so a value gets the same id in every
feature of one table, and different ids across tables.
"""

import collections
import contextlib
import copy
import csv
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from omegaconf import OmegaConf

from ctr.data import shard_writer
from ctr.data.ids import splitmix64, to_id
from ctr.data.rows import BAG_PAD
from ctr.data.schema import (DatePart, DelimitedFileConfig, DerivedConfig, Normalization, OtherColumns, SchemaConfig,
                             SparseConfig, SplitRule, ValRule, check_schema)
from ctr.data.parallel_preprocess import (PART_BYTES, Part, PlannedInput, byte_parts, newlines_before, to_line_start,
                                         write_parts)
from ctr.data.shard_writer import BadLine, Block, FileBlocks, Room, ShardState
from ctr.data.shards import SHUFFLE_BUFFER, SPLITS, ShardSource, SplitBy

log = logging.getLogger(__name__)


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
    """The schema as typed dataclasses, checked against `SchemaConfig` (keys, types, choices),
    whether given as such, as a DictConfig or as a dict."""
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SchemaConfig), schema))
    check_schema(typed)
    return typed


class _Line(NamedTuple):
    number: int
    offset: int  # of its first byte in the file
    text: str


class _Lines:
    """Numbered text lines of a file from byte `begin` on, for `csv.reader`, with the lines of the
    current record kept, so that a record can be read again from its second line. A record
    whose first line starts at or past byte `stop` is not begun: the lines end there (`end`)."""

    def __init__(self, table: "_Table", stream, begin: int, stop: Optional[int], first_line: int) -> None:
        self._table, self._stream, self._stop = table, stream, stop
        self._pending: collections.deque = collections.deque()
        self._offset, self._number = begin, first_line  # of the next line read from the stream
        self.taken: List[_Line] = []  # the lines of the record being read

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        item = self._pending.popleft() if self._pending else self._read()
        if not self.taken and self._stop is not None and item.offset >= self._stop:
            self._pending.appendleft(item)
            raise StopIteration
        self.taken.append(item)
        return item.text

    def _read(self) -> _Line:
        raw = self._stream.readline()
        if not raw:
            raise StopIteration
        line = _Line(self._number, self._offset, self._table.decode(raw, self._offset))
        self._offset, self._number = self._offset + len(raw), self._number + 1
        return line

    def take(self) -> List[_Line]:
        """The lines read since the last call."""
        taken, self.taken = self.taken, []
        return taken

    def push_back(self, lines: List[_Line]) -> None:
        self._pending.extendleft(reversed(lines))

    @property
    def end(self) -> Tuple[int, int]:
        """(byte offset, line number) of the first line no record took."""
        first = self._pending[0] if self._pending else _Line(self._number, self._offset, "")
        return first.offset, first.number


class _Record(NamedTuple):
    """A record's first line and fields; or, where no record could be read, no fields and the problem."""

    line: int
    fields: List[str]
    problem: Optional[BadLine] = None


def _unreadable(taken: List[_Line], error: csv.Error) -> _Record:
    """The problem record of lines the csv module refused, or of a record that ran past its line."""
    first = taken[0][0]
    if len(taken) > 1:
        problem = BadLine(first, "unbalanced quote", f"a quote opened on this line is not closed before line "
                                                     f"{taken[-1][0]} ({error}); the lines after it are read as rows")
    else:
        problem = BadLine(first, "unparseable", f"unparseable line ({error})")
    return _Record(first, [], problem)


class _Table:
    """One delimited file: its column names, and its records with their line numbers."""

    def __init__(self, path: Path, spec: DelimitedFileConfig, setting: str) -> None:
        self.path, self.spec, self.setting = path, spec, setting
        if not path.is_file():
            raise CsvFormatError(f"{path} does not exist (data.schema{setting})")
        if spec.header:
            first = next(self._all_records(), None)
            if first is None:
                raise CsvFormatError(f"{path} is empty (data.schema{setting}.header=true expects a header line)")
            if first.problem:
                raise CsvFormatError(f"{path}:{first.line}: {first.problem.message}")
            self.columns = first.fields
        elif spec.columns:
            self.columns = list(spec.columns)
        else:
            raise CsvFormatError(f"{path}: data.schema{setting}.header=false needs data.schema{setting}.columns")

    def read(self, lines: _Lines) -> Iterator[_Record]:
        """Every record of `lines`, numbered by its first line. A record spanning lines whose field
        count is wrong, or that the csv module refuses, is a quote left open: it comes back as a
        problem at its first line, and its later lines are read again as records of their own."""
        while True:
            reader = csv.reader(lines, delimiter=self.spec.delimiter)
            try:
                for fields in reader:
                    if len(lines.taken) > 1 and len(fields) != len(getattr(self, "columns", fields)):
                        raise csv.Error(f"{len(fields)} fields, expected {len(self.columns)}")
                    taken = lines.take()
                    if fields:
                        yield _Record(taken[0].number, fields)
                return
            except csv.Error as error:
                taken = lines.take()
                lines.push_back(taken[1:])
                yield _unreadable(taken, error)

    def decode(self, raw: bytes, offset: int) -> str:
        """A line decoded alone, so that an encoding error names its line (counted then)."""
        encoding = self.spec.encoding
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as error:
            number = 1 + newlines_before(self.path, offset)
            raise CsvFormatError(f"{self.path}:{number}: not valid {encoding} "
                                 f"(data.schema{self.setting}.encoding={encoding!r}): {error.reason}") from error

    @contextlib.contextmanager
    def records_from(self, begin: int, stop: Optional[int], first_line: int) -> Iterator[Tuple[_Lines, Iterator[_Record]]]:
        """The lines from byte `begin` (a record's start) and the records whose first line starts
        before `stop`; the header is skipped where `begin` is the file's start."""
        with open(self.path, "rb") as stream:
            stream.seek(begin)
            lines = _Lines(self, stream, begin, stop, first_line)
            records = self.read(lines)
            if begin == 0 and self.spec.header:
                next(records, None)
            yield lines, records

    def _all_records(self) -> Iterator[_Record]:
        with open(self.path, "rb") as stream:
            yield from self.read(_Lines(self, stream, 0, None, 1))

    def records(self) -> Iterator[_Record]:
        """Data records (the header skipped)."""
        records = self._all_records()
        if self.spec.header:
            next(records, None)
        return records

    def index(self, column: str, setting: str) -> int:
        return _column_index(self.columns, column, self.path, setting)


def read_records(path: Path, schema: SchemaConfig) -> Tuple[List[str], Iterator[_Record]]:
    """A file in the schema's main layout as preprocessing reads it: its column names, and its
    records (line, fields, problem), an unreadable record (e.g. an unbalanced quote) a problem."""
    table = _Table(Path(path), schema, "")
    return table.columns, table.records()


def _column_index(columns: List[str], column: str, origin, setting: str) -> int:
    if column not in columns:
        raise CsvFormatError(
            f"{origin}: data.schema.{setting} names column {column!r}, which is not among its columns {columns}"
        )
    return columns.index(column)


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
    """Where each column the schema names is found (a main record of `columns`, read from
    `origin`, or a side table), checked up front."""

    def __init__(self, schema: SchemaConfig, columns: List[str], origin, root: Path) -> None:
        self.columns, self.origin = columns, origin
        self.sides: List[_SideTable] = []
        self.sources: Dict[str, Tuple[int, int]] = {c: (-1, i) for i, c in enumerate(columns)}
        for j, join in enumerate(schema.joins):
            table = _Table(root / join.path, join, f".joins[{j}]")
            key = table.index(join.key, f"joins[{j}].key")
            on = _column_index(columns, join.join_column, origin, f"joins[{j}].join_column")
            rows = {}
            for line, fields, problem in table.records():
                if problem:
                    raise CsvFormatError(f"{table.path}:{line}: {problem.message}")
                rows.setdefault(fields[key] if key < len(fields) else "", fields)
            self.sides.append(_SideTable(table, on, rows, join.max_unmatched_fraction, empty=[""] * len(table.columns)))
            for i, column in enumerate(table.columns):
                if column != join.key:
                    if column in self.sources:
                        raise CsvFormatError(f"{table.path}: column {column!r} of data.schema.joins[{j}] is already a column "
                                             f"of the rows or of an earlier join; rename it with data.schema.joins[{j}].columns")
                    self.sources[column] = (j, i)
        self.derived = [_Derived(spec, f"derived[{j}]", self) for j, spec in enumerate(schema.derived)]
        for i, derived in enumerate(self.derived):
            if derived.name in self.sources:
                raise CsvFormatError(f"data.schema.derived[{i}].name={derived.name!r} is already a column of the rows "
                                     "or of a joined table; choose another name")
            self.sources[derived.name] = (len(self.sides), i)

    def locate(self, column: str, setting: str) -> Tuple[int, int]:
        if column not in self.sources:
            raise CsvFormatError(
                f"{self.origin}: data.schema.{setting} names column {column!r}, which is neither in its header "
                f"{self.columns} nor in a joined table"
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
        if self.derived:
            parts.append([derived.value(parts) for derived in self.derived])
        return parts


class _Derived:
    """A `derived` column (`ctr.data.schema.DerivedConfig`): its inputs located and its rule checked up front."""

    def __init__(self, spec: DerivedConfig, setting: str, layout: _Layout) -> None:
        self.name, self.spec, self.setting = spec.name, spec, setting
        rules = [spec.prefix is not None, spec.substring is not None, spec.date_part is not None, bool(spec.cross)]
        if sum(rules) != 1:
            raise CsvFormatError(f"data.schema.{setting} ({spec.name}): give exactly one of prefix, substring, "
                                 "date_part (with date_format) or cross")
        if (spec.date_part is None) != (spec.date_format is None):
            raise CsvFormatError(f"data.schema.{setting} ({spec.name}): date_part and date_format go together")
        if spec.substring is not None and len(spec.substring) != 2:
            raise CsvFormatError(f"data.schema.{setting}.substring={list(spec.substring)}: expected [start, stop]")
        if bool(spec.cross) == (spec.column is not None):
            raise CsvFormatError(f"data.schema.{setting} ({spec.name}): a cross names its columns in `cross`; "
                                 "the other rules read one `column`")
        columns = spec.cross or [spec.column]
        self.inputs = [layout.locate(c, f"{setting}.column") for c in columns]

    def value(self, parts: List[List[str]]) -> str:
        values = [_get(parts, where) for where in self.inputs]
        spec = self.spec
        if spec.cross:
            return "\x1f".join(values)
        raw = values[0]
        if raw == "":
            return ""
        if spec.prefix is not None:
            return raw[: spec.prefix]
        if spec.substring is not None:
            return raw[spec.substring[0] : spec.substring[1]]
        try:
            date = datetime.datetime.strptime(raw, spec.date_format)
        except ValueError:
            raise ValueError(f"column {spec.column} is {raw!r}, not a date in data.schema.{self.setting}.date_format="
                             f"{spec.date_format!r}") from None
        return str(date.weekday() if spec.date_part == DatePart.weekday else getattr(date, spec.date_part))


def _with_other_columns(schema: SchemaConfig, layout: _Layout) -> SchemaConfig:
    """The schema with `other_columns: categorical` applied: each column not otherwise named
    becomes a categorical feature of its own, named as the column."""
    for column in schema.ignore:
        layout.locate(column, "ignore")
    if schema.other_columns == OtherColumns.none:
        return schema
    named = {schema.label.column, *(d.column for d in schema.dense), *(c for s in schema.sparse for c in s.columns),
             *schema.ignore}
    others = [SparseConfig(name=column, columns=[column]) for column in layout.sources if column not in named]
    return dataclasses.replace(schema, sparse=[*schema.sparse, *others])


def _get(parts: List[List[str]], where: Tuple[int, int]) -> str:
    row = parts[where[0] + 1]
    return row[where[1]] if where[1] < len(row) else ""


class _Features:
    """Turns joined records into column values: label, dense, single ids and bags."""

    def __init__(self, schema: SchemaConfig, layout: _Layout) -> None:
        self.schema = schema
        self.label = layout.locate(schema.label.column, "label.column")
        self.dense = [layout.locate(d.column, f"dense[{j}].column") for j, d in enumerate(schema.dense)]
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
        value = _finite(raw, f"label column {label_rule.column}")
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
            x = spec.fill if raw == "" else _finite(raw, f"dense column {spec.column}")
            dense.append(float(np.log1p(max(x, 0.0))) if spec.log1p else x)
        single = [self._category(s, _get(parts, self.columns[id(s)][0])) for s in self.single]
        bags = [self._members(s, parts) for s in self.bags]
        return label, dense, single, bags, missing

    def _category(self, spec: SparseConfig, raw: str) -> str:
        if spec.boundaries is None or raw == "":
            return raw
        x = _finite(raw, f"column {spec.columns[0]} of bucketised feature {spec.name}")
        return f"bucket {int(np.searchsorted(spec.boundaries, x, side='right'))}"

    def _members(self, spec: SparseConfig, parts: List[List[str]]) -> List[str]:
        values = [_get(parts, where) for where in self.columns[id(spec)]]
        if spec.flags:
            return [column for column, v in zip(spec.columns, values) if v.strip() not in ("", "0")]
        if spec.delimiter:
            values = [member for v in values for member in v.split(spec.delimiter)]
        return [self._category(spec, v.strip()) for v in values if v.strip()]


def _finite(raw: str, what: str) -> float:
    """`raw` as a finite number; nan and inf are refused like any other bad value, since one
    of them would make the normalisation statistics, and then every loss, nan."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{what} is {raw!r}, not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} is {raw!r}, not a finite number")
    return value


def _parse_record(layout: _Layout, features: _Features, record: _Record):
    """A main record's values in `_Block.add`'s order, or the BadLine saying why it has none
    (a record that could not be read, a wrong field count, a bad value)."""
    line, fields, problem = record
    if problem is not None:
        return problem
    if len(fields) != len(layout.columns):
        return BadLine(line, "field count", f"{len(fields)} fields, expected {len(layout.columns)}")
    try:
        label, dense, single, bags, missing = features.parse(layout.joined(fields))
    except ValueError as error:
        return BadLine(line, "value", str(error))
    return label, dense, single, bags, missing + [v == "" for v in single]


class RecordParser:
    """The schema's reading of main-file records (named `columns`, read from `origin`) outside
    preprocessing, e.g. raw rows to score: each joined with the side tables under `root`, its
    derived columns computed, and parsed, filled and hashed into the same features
    (`other_columns` included) exactly as preprocessing does (before the dense normalisation)."""

    def __init__(self, schema, columns: Sequence[str], origin, root: Path) -> None:
        schema = as_schema(schema)
        self._layout = _Layout(schema, list(columns), origin, Path(root))
        self._features = _Features(_with_other_columns(schema, self._layout), self._layout)

    def parse(self, records: Iterable[Tuple[int, List[str], Optional[BadLine]]]
              ) -> Tuple[Dict[str, np.ndarray], List[BadLine]]:
        """The clean records' columns as a shard holds them ("label" included), and the other
        records' problems; a record is (line, fields, problem), problem None where it was read."""
        block, problems = _Block(), []
        for record in records:
            parsed = _parse_record(self._layout, self._features, _Record(*record))
            if isinstance(parsed, BadLine):
                problems.append(parsed)
            else:
                block.add(*parsed)
        return block.columns(self._features, {spec.name: 0 for spec in self._features.bags}), problems


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
    missing: List[List[bool]] = field(default_factory=list)

    def add(self, label: float, dense: List[float], single: List[str], bags: List[List[str]],
            missing: List[bool]) -> None:
        self.labels.append(label), self.dense.append(dense), self.single.append(single)
        self.bags.append(bags), self.missing.append(missing)

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


def _train_block(dense: np.ndarray) -> Dict[str, object]:
    """A block of train rows' dense values summarised for the normalisation (`_dense_transform`)."""
    return {"rows": len(dense), "sum": dense.sum(0).tolist(), "squares": (dense**2).sum(0).tolist(),
            "low": dense.min(0).tolist(), "high": dense.max(0).tolist()}


def _added_in_turn(vectors: Sequence[Sequence[float]], total: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The vectors added one after the other, as one process reading block after block adds them.

    Float addition does not associate, so adding each part's total would differ from one
    process's running sum in the last bits; adding every block in turn, in part order,
    gives the same bits whatever the number of workers.
    """
    for vector in vectors:
        total = np.array(vector, np.float64) if total is None else total + np.array(vector, np.float64)
    return total


def _dense_transform(schema: SchemaConfig, blocks: Sequence[Dict[str, object]]) -> Dict[str, List[float]]:
    """Per dense column: value ← (value - shift) · scale, from the train rows' blocks (in reading order)."""
    count = sum(block["rows"] for block in blocks)
    total, squares = _added_in_turn([b["sum"] for b in blocks]), _added_in_turn([b["squares"] for b in blocks])
    shift, scale = [], []
    for j, spec in enumerate(schema.dense):
        if spec.normalize == Normalization.none or not count:
            shift.append(0.0), scale.append(1.0)
        elif spec.normalize == Normalization.standardize:
            mean = total[j] / count
            std = float(np.sqrt(max(squares[j] / count - mean**2, 0.0)))
            shift.append(float(mean)), scale.append(1.0 / std if std > 0 else 1.0)
        else:
            low, high = min(b["low"][j] for b in blocks), max(b["high"][j] for b in blocks)
            span = float(high - low)
            shift.append(float(low)), scale.append(1.0 / span if span > 0 else 1.0)
    return {"shift": shift, "scale": scale}


class _Splitter:
    """Plans each record of the main files into a split, and drops test rows seen in training.

    Every record's split is planned from the first pass (`scanned`: each record's timestamp and
    key) over all parts, merged in part order (`plan`). Random rules draw per record from a
    generator seeded by (seed, file index), in file order: the draws of a file's records are
    the generator's first draws, however the file is cut. The ordered rules need a global
    order, so the plan holds every record's timestamp in one process (8 bytes a record):
    `by: timestamp` sorts them (ties in file order, a stable sort) and cuts the latest
    `test_ratio`, whose earliest timestamp is the cut-off; `by: order` and `val_by: order` cut
    by position in file (or time) order. `dedup_key` keeps a 128-bit hash of each non-test
    row's key; the parts drop test rows whose key hash is among them.
    """

    def __init__(self, schema: SchemaConfig, files: List[Path], val_files: List[Path], test_files: List[Path],
                 main: _Table) -> None:
        split = schema.split
        if split.by == SplitRule.files and not test_files:
            raise CsvFormatError("data.schema.split.by=files needs data.schema.test_files")
        if split.by != SplitRule.files and test_files:
            raise CsvFormatError(f"data.schema.test_files is set, but data.schema.split.by='{split.by}'; use by: files")
        if val_files and split.val_ratio:
            raise CsvFormatError(f"data.schema.val_files is set and data.schema.split.val_ratio={split.val_ratio}: "
                                 "val is one or the other; set val_ratio: 0")
        if not (0 <= split.test_ratio < 1 and 0 <= split.val_ratio and split.test_ratio + split.val_ratio < 1):
            raise CsvFormatError(f"data.schema.split: test_ratio={split.test_ratio}, val_ratio={split.val_ratio}: "
                                 "need both >= 0 and their sum < 1")
        self.split = split
        self.val_files = {files.index(f) for f in val_files}
        self.test_files = {files.index(f) for f in test_files}
        self.timestamp = main.index(split.timestamp_column, "split.timestamp_column") if split.by == SplitRule.timestamp else None
        self.key = [main.index(c, "split.dedup_key") for c in split.dedup_key]

    def scanned(self, fields: List[str]) -> Tuple[float, Optional[bytes]]:
        """A record's timestamp (nan: none or no timestamp rule) and key hash (None: no `dedup_key`,
        or an unreadable record, which has no key)."""
        stamp = _number(fields, self.timestamp) if self.timestamp is not None else math.nan
        return stamp, self.key_hash(fields) if self.key and fields else None

    def key_hash(self, fields: List[str]) -> bytes:
        key = [fields[i] if i < len(fields) else "" for i in self.key]
        return hashlib.blake2b(json.dumps(key).encode(), digest_size=16).hexdigest().encode()

    def plan(self, sizes: List[int], stamps: np.ndarray, keys: np.ndarray, first: Path
             ) -> Tuple[np.ndarray, np.ndarray, Dict[str, object]]:
        """Every record's split code (`SPLITS` index, in file order), the sorted key hashes of the
        non-test rows, and the timestamp cut-off with how its ties were divided. `sizes`: the
        records per file; `stamps`, `keys`: per record where the rules use them (a key b"" where the
        record has none), else empty."""
        codes = np.concatenate([np.zeros(0, np.int8)] + [self._draws(i, self._rng(i).random(n))
                                                          for i, n in enumerate(sizes)])
        order = np.arange(len(codes))
        if self.timestamp is not None:
            order = self._time_order(stamps, first)
        ties: Dict[str, object] = {}
        if self.split.by in (SplitRule.order, SplitRule.timestamp):
            codes[codes == SPLITS.index("test")] = SPLITS.index("train")
            codes[_last(order, self.split.test_ratio)] = SPLITS.index("test")
            if self.timestamp is not None:
                ties = self._ties(stamps, codes)
        if self.split.val_by == ValRule.order and self.split.val_ratio:
            codes[codes == SPLITS.index("val")] = SPLITS.index("train")
            kept = order[codes[order] != SPLITS.index("test")]
            codes[_last(kept, self.split.val_ratio)] = SPLITS.index("val")
        seen = np.unique(keys[(keys != b"") & (codes != SPLITS.index("test"))]) if self.key else keys[:0]
        return codes, seen, {"cutoff": ties.get("cutoff"), "ties": ties}

    def _time_order(self, stamps: np.ndarray, first: Path) -> np.ndarray:
        """Records with a numeric timestamp, by time; ties in file order (a stable sort)."""
        valid = np.flatnonzero(~np.isnan(stamps))
        if not len(valid):
            raise CsvFormatError(f"{first}: data.schema.split.timestamp_column={self.split.timestamp_column!r} "
                                 "holds no numbers")
        return valid[np.argsort(stamps[valid], kind="stable")]

    def _ties(self, stamps: np.ndarray, codes: np.ndarray) -> Dict[str, object]:
        """The cut-off timestamp and how its tied rows were divided (meta.json, the log)."""
        test = codes == SPLITS.index("test")
        if not test.any():
            return {}
        cutoff = float(stamps[test].min())
        tied = stamps == cutoff
        ties = {"cutoff": cutoff, "rows_at_cutoff": int(tied.sum()), "rows_at_cutoff_in_test": int((tied & test).sum()),
                "rule": "rows tied at the cut-off go in file order, the later ones to test"}
        log.info("timestamp split: cut-off %s holds %d rows, %d of them to test (file order)",
                 cutoff, ties["rows_at_cutoff"], ties["rows_at_cutoff_in_test"])
        return ties

    def _rng(self, file_index: int) -> np.random.Generator:
        return np.random.default_rng([self.split.seed, file_index])

    def _draws(self, file_index: int, u: np.ndarray) -> np.ndarray:
        """The split codes of a file's records by the random rules and the files (`u`: one draw per record)."""
        split = self.split
        codes = np.full(len(u), SPLITS.index("train"), np.int8)
        if file_index in self.test_files:
            return np.full(len(u), SPLITS.index("test"), np.int8)
        test = np.zeros(len(u), bool)
        if split.by == SplitRule.ratio:
            test, u = u < split.test_ratio, u - split.test_ratio
        codes[~test & (True if file_index in self.val_files else u < split.val_ratio)] = SPLITS.index("val")
        codes[test] = SPLITS.index("test")
        return codes


def _last(positions: np.ndarray, fraction: float) -> np.ndarray:
    """The last `fraction` of `positions` (as many as a cut at int(n · (1 - fraction)) leaves)."""
    return positions[int(len(positions) * (1 - fraction)):]


def _number(fields: List[str], index: int) -> float:
    try:
        return float(fields[index])
    except (ValueError, IndexError):
        return float("nan")


def preprocess_csv(schema, output: str, on_bad_row: str = shard_writer.BadRowPolicy.error,
                   shard_rows: int = shard_writer.SHARD_ROWS, chunk_rows: int = shard_writer.CHUNK_ROWS,
                   overwrite: bool = False, progress_bar: bool = True, workers: int = 1,
                   part_bytes: int = PART_BYTES) -> dict:
    """Turns the files `schema` describes into shards in `output`; returns the meta.json content.

    The schema's columns, side tables and split settings are checked before any row is
    written. `workers` processes (under torchrun: every rank) read the main files in parts of
    `part_bytes` (at record boundaries) twice: a first pass plans every record's split
    (`_Splitter`), then each part is written; the output is the same whatever the number of
    workers, and the same as one process reading the files whole where no file is cut.
    """
    schema = as_schema(schema)
    open_source = functools.partial(_CsvInput, schema, part_bytes)
    return write_parts(open_source, output, on_bad_row, shard_rows, chunk_rows, overwrite, progress_bar, workers)


def split_columns(schema, columns: Sequence[str]) -> Dict[str, Dict[str, List[str]]]:
    """The raw values of main-file `columns` of every record, per split, in file order: the
    rows preprocessing writes to each split (`schema.split`, planned as `preprocess_csv`
    plans it; de-duplicated test rows left out).

    For readers that need columns the shards do not keep (e.g. a timestamp to order by).
    A record that cannot be read stops with its file and line.
    """
    source = _CsvInput(as_schema(schema), PART_BYTES, shard_writer.BadRowPolicy.error, shard_writer.SHARD_ROWS,
                       shard_writer.CHUNK_ROWS)
    return source.planned(source.plan([source.scan(i) for i in range(len(source.parts()))])).columns_by_split(columns)


class _CsvInput(PlannedInput):
    """The schema's main files as blocks of rows per split, joined with its side tables.

    Parts are `part_bytes` of a main file. The first pass reads each part's records (its
    timestamps and keys, `_Splitter.scanned`); the plan then fixes where each part starts
    (a cut that falls inside a record spanning lines is moved to that record's end, found
    by reading the part again from the previous part's end), its first line number and
    record, and every record's split. A part cannot resume inside itself (its splits' shards
    fill at different rates), so an interrupted part is written again from its start.
    """

    name = "csv"
    splits = SPLITS
    error = CsvFormatError

    def __init__(self, schema: SchemaConfig, part_bytes: int, policy: shard_writer.BadRowPolicy, shard_rows: int,
                 chunk_rows: int) -> None:
        if part_bytes < 1:
            raise ValueError(f"part_bytes={part_bytes}: must be >= 1")
        if not schema.files:
            raise CsvFormatError("data.schema.files is empty: list the files to read (relative to data.schema.root)")
        root = Path(schema.root)
        val_files = [root / f for f in schema.val_files]
        test_files = [root / f for f in schema.test_files]
        # Training files first: their keys de-duplicate the test rows.
        self._files = [root / f for f in schema.files] + val_files + test_files
        self._schema, self._policy, self._chunk_rows = schema, policy, chunk_rows
        self._tables = [_Table(path, schema, "") for path in self._files]
        self._main = self._tables[0]
        for table in self._tables[1:]:
            if table.columns != self._main.columns:
                raise CsvFormatError(f"{table.path}: header {table.columns} differs from {self._files[0]}'s "
                                     f"{self._main.columns}")
        self._layout = _Layout(schema, self._main.columns, self._main.path, root)
        self._features = _Features(_with_other_columns(schema, self._layout), self._layout)
        self._splitter = _Splitter(schema, self._files, val_files, test_files, self._main)
        self._parts = byte_parts(self._files, part_bytes, whole=lambda path: False)
        self.input = str(schema.root)
        self.description = ", ".join(str(f) for f in self._files)
        self.inputs = self._files + [side.table.path for side in self._layout.sides]
        self.settings = {"schema": asdict(schema), "on_bad_row": policy, "shard_rows": shard_rows}
        if len(self._parts) > len({part.file_index for part in self._parts}):
            self.settings["part_bytes"] = part_bytes  # a cut file's parts end shards and blocks where it is cut
        self.dense = [d.column for d in schema.dense]
        self.sparse = [s.name for s in self._features.single]
        self._bags = [s.name for s in self._features.bags]
        self.columns = ["label", *self.dense, *self.sparse, *self._bags]
        self._part_index: Optional[int] = None
        self._plan: Dict[str, np.ndarray] = {}
        self._seen: frozenset = frozenset()

    def parts(self) -> List[Part]:
        return self._parts

    def scan(self, index: int) -> Dict[str, np.ndarray]:
        return self._scan(index, None)

    def _scan(self, index: int, begin: Optional[int]) -> Dict[str, np.ndarray]:
        """The part's records from `begin` (None: its first line start): where they start and end,
        how many lines they take, and each one's timestamp and key hash."""
        part = self._parts[index]
        table = self._tables[part.file_index]
        if begin is None:
            with open(table.path, "rb") as stream:
                begin = part.start + to_line_start(stream, part.start)
        stamps, keys, count = [], [], 0
        timed, keyed = self._splitter.timestamp is not None, bool(self._splitter.key)
        with table.records_from(begin, part.stop, 1) as (lines, records):
            for count, (_, fields, _) in enumerate(records, 1):
                stamp, key = self._splitter.scanned(fields)
                if timed:
                    stamps.append(stamp)
                if keyed:
                    keys.append(key or b"")
            end, next_line = lines.end
        return {"begin": np.int64(begin), "end": np.int64(end), "lines": np.int64(next_line - 1),
                "records": np.int64(count), "stamps": np.array(stamps, np.float64), "keys": np.array(keys, "S32")}

    def plan(self, scans: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        """Each part's start (at a record), first line and first record, and every record's split."""
        line, sizes = [], [0] * len(self._files)
        for index, part in enumerate(self._parts):
            before = index - 1 if index and self._parts[index - 1].file_index == part.file_index else None
            if before is None:
                line.append(1)
                continue
            if scans[index]["begin"] != scans[before]["end"]:  # the cut fell inside a record spanning lines
                scans[index] = self._scan(index, int(scans[before]["end"]))
            line.append(line[before] + int(scans[before]["lines"]))
        for part, scan in zip(self._parts, scans):
            sizes[part.file_index] += int(scan["records"])
        records = np.array([scan["records"] for scan in scans], np.int64)
        codes, seen, split = self._splitter.plan(
            sizes, np.concatenate([np.zeros(0)] + [scan["stamps"] for scan in scans]),
            np.concatenate([np.zeros(0, "S32")] + [scan["keys"] for scan in scans]), self._files[0])
        return {"begin": np.array([scan["begin"] for scan in scans], np.int64), "line": np.array(line, np.int64),
                "first_record": np.cumsum(records) - records, "records": records, "codes": codes, "seen": seen,
                "split": np.array(json.dumps(split))}

    def planned(self, plan: Dict[str, np.ndarray]) -> "_CsvInput":
        source = copy.copy(self)
        source._plan = plan
        source._seen = frozenset(plan["seen"].tolist())
        return source

    def for_part(self, index: int) -> "_CsvInput":
        source = copy.copy(self)
        source._part_index = index
        return source

    def start(self) -> Dict[str, object]:
        """A part's statistics: rows and positives per split, truncated bags, unmatched join keys,
        de-duplicated test rows, and every block's dense sums (`_added_in_turn`)."""
        return {"rows": {s: 0 for s in SPLITS}, "positives": {s: 0 for s in SPLITS},
                "truncated": {name: 0 for name in self._bags}, "unmatched": [0] * len(self._layout.sides),
                "duplicates": 0, "dense_blocks": [], "train_blocks": []}

    def files(self, state: ShardState, room: Room) -> Iterator[FileBlocks]:
        path = self._files[self._parts[self._part_index].file_index]
        yield path.name, None, self._blocks(state)

    def _blocks(self, state: ShardState) -> Iterator[Block]:
        """Blocks of up to `chunk_rows` rows per split as they fill, then each split's rest closing it."""
        index, position = self._part_index, state.source
        part = self._parts[index]
        for side in self._layout.sides:
            side.unmatched = 0
        blocks = {split: _Block() for split in SPLITS}
        width = len(self._main.columns)
        table = self._tables[part.file_index]
        with self.assigned(index) as assigned:
            for record, split in assigned:
                if split is None:
                    position["duplicates"] += 1
                    if record.problem is None and len(record.fields) == width:
                        continue
                parsed = _parse_record(self._layout, self._features, record)
                if isinstance(parsed, BadLine):
                    state.record_bad(table.path, parsed, self._policy, CsvFormatError,
                                     " (on_bad_row=error; on_bad_row=skip drops such rows)")
                    continue
                block = blocks[split]
                block.add(*parsed)
                if len(block.labels) >= self._chunk_rows:
                    blocks[split] = _Block()
                    yield self._packed(split, block, position)
        position["unmatched"] = [side.unmatched for side in self._layout.sides]
        for split, block in blocks.items():
            yield self._packed(split, block, position, closes_split=True)

    @contextlib.contextmanager
    def assigned(self, index: int) -> Iterator[Iterator[Tuple[_Record, Optional[str]]]]:
        """Part `index`'s records with their planned split, in file order; None for a test row
        whose key is also in a non-test row (`dedup_key`). Needs the plan (`planned`)."""
        plan, part = self._plan, self._parts[index]
        first = int(plan["first_record"][index])
        codes = plan["codes"][first:first + int(plan["records"][index])]
        table = self._tables[part.file_index]
        with table.records_from(int(plan["begin"][index]), part.stop, int(plan["line"][index])) as (_, records):
            yield ((record, self._split_of(code, record)) for code, record in zip(codes, records))

    def columns_by_split(self, columns: Sequence[str]) -> Dict[str, Dict[str, List[str]]]:
        """`split_columns` over this planned source."""
        main = self._main
        indices = [main.index(column, f"columns[{column!r}]") for column in columns]
        values = {split: {column: [] for column in columns} for split in SPLITS}
        for index in range(len(self._parts)):
            path = self._tables[self._parts[index].file_index].path
            with self.assigned(index) as assigned:
                for record, split in assigned:
                    if record.problem is not None or len(record.fields) != len(main.columns):
                        problem = record.problem.message if record.problem else f"{len(record.fields)} fields, expected {len(main.columns)}"
                        raise CsvFormatError(f"{path}:{record.line}: {problem}")
                    if split is not None:
                        for column, position in zip(columns, indices):
                            values[split][column].append(record.fields[position])
        return values

    def _split_of(self, code: int, record: _Record) -> Optional[str]:
        split = SPLITS[code]
        if split == "test" and self._splitter.key and self._splitter.key_hash(record.fields) in self._seen:
            return None
        return split

    def _packed(self, split: str, block: _Block, position: dict, closes_split: bool = False) -> Block:
        """A split's collected rows as columns; adds them to the part's statistics."""
        rows = len(block.labels)
        dense = np.array(block.dense, np.float64).reshape(rows, len(self.dense))
        position["rows"][split] += rows
        position["positives"][split] += int(sum(block.labels))
        if rows:
            position["dense_blocks"].append(dense.sum(0).tolist())
            if split == "train":
                position["train_blocks"].append(_train_block(dense))
        missing = np.array(block.missing, np.int64).reshape(rows, len(self.dense) + len(self.sparse)).sum(0)
        columns = block.columns(self._features, position["truncated"])
        return Block(columns, missing, dense.sum(0), split, closes_split)

    def merged_position(self, positions: Sequence[dict]) -> dict:
        """Counts summed; the blocks' dense sums listed in part order, to be added in turn."""
        return {
            "rows": {s: sum(p["rows"][s] for p in positions) for s in SPLITS},
            "positives": {s: sum(p["positives"][s] for p in positions) for s in SPLITS},
            "truncated": {name: sum(p["truncated"][name] for p in positions) for name in self._bags},
            "unmatched": [sum(p["unmatched"][j] for p in positions) for j in range(len(self._layout.sides))],
            "duplicates": sum(p["duplicates"] for p in positions),
            "dense_blocks": [block for p in positions for block in p["dense_blocks"]],
            "train_blocks": [block for p in positions for block in p["train_blocks"]],
        }

    def check(self, state: ShardState) -> None:
        """Fails on joins missing too often, or on a label with one class."""
        schema, position = self._schema, state.source
        looked_up = state.rows + sum(state.bad.values())
        for j, side in enumerate(self._layout.sides):
            unmatched = position["unmatched"][j]
            fraction = unmatched / max(looked_up, 1)
            if fraction > side.max_unmatched_fraction:
                raise CsvFormatError(
                    f"{side.table.path}: {unmatched} of {looked_up} rows ({fraction:.1%}) of {self.description} "
                    f"have no match for data.schema.joins[{j}].join_column={schema.joins[j].join_column!r}, more than "
                    f"data.schema.joins[{j}].max_unmatched_fraction={side.max_unmatched_fraction}"
                )
        positives, rows = position["positives"]["train"], position["rows"]["train"]
        if positives in (0, rows):
            rule = schema.label
            raise CsvFormatError(
                f"{self.description}: data.schema.label (column={rule.column!r}, threshold={rule.threshold}) makes "
                f"every one of the {rows} train rows {int(positives > 0)}; a click model needs both classes"
            )

    def meta(self, state: ShardState) -> dict:
        position, split = state.source, json.loads(str(self._plan["split"]))
        shared: Dict[str, List[str]] = {}
        for spec in self._schema.sparse:
            if spec.table:
                shared.setdefault(spec.table, []).append(spec.name)
        # The common mean adds the parts' totals; these add every block in turn, as one process does.
        dense_sum = _added_in_turn(position["dense_blocks"], np.zeros(len(self.dense)))
        return {
            "files": [{"name": str(f), "bytes": f.stat().st_size} for f in self._files],
            "bags": self._bags,
            "bag_lengths": self._features.bag_lengths,
            "shared_tables": shared,
            "dense_transform": _dense_transform(self._schema, position["train_blocks"]),
            "dtypes": {"bags": f"int64, padded with {BAG_PAD}"},
            "splits": {s: {"rows": position["rows"][s], "positives": position["positives"][s]} for s in SPLITS},
            "test_rows_deduplicated": position["duplicates"],
            "timestamp_cutoff": split["cutoff"],
            "timestamp_ties": split["ties"],
            "joins": [{"path": str(side.table.path), "unmatched_rows": position["unmatched"][j]}
                      for j, side in enumerate(self._layout.sides)],
            "stats": {"dense": {name: {"mean": float(dense_sum[j]) / state.rows} for j, name in enumerate(self.dense)},
                      "bags_truncated": position["truncated"]},
        }


def csv_shards(path: str, schema, shuffle_buffer: int = SHUFFLE_BUFFER, seed: int = 0,
               verify_checksums: bool = True, batch_size: int = 2048, max_epochs: int = 10) -> ShardSource:
    """The RowSource of `data=<csv data set>`: its shards, split as preprocessing assigned the rows.

    Refuses shards written from another schema, so a changed schema is never trained on stale shards.
    """
    expected = json.loads(json.dumps(asdict(as_schema(schema))))
    source = ShardSource(path, split_by=SplitBy.preprocessed, shuffle_buffer=shuffle_buffer, seed=seed,
                         verify_checksums=verify_checksums, batch_size=batch_size, max_epochs=max_epochs)
    written = source.meta.get("settings", {}).get("schema")
    if written != expected:
        raise CsvFormatError(f"{path} was not written from this data.schema; run launch/preprocess.py "
                             "data=<this data set> overwrite=true")
    return source

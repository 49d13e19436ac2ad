"""An artifact's feature pipeline: raw rows of the training layout → the model's inputs.

Rows go through the data path's own parsers (Criteo TSV: `ctr.data.criteo.parse_lines`; a
schema's CSV/TSV: `ctr.data.tabular.RecordParser`), so a scored row becomes exactly the
features it would have become in a shard, then through the dense normalisation that
preprocessing measured on the train split, as the shard reader applies it. The label is
optional: rows without it are scored as if it were 0.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ctr.data import criteo
from ctr.data.rows import Rows
from ctr.data.shard_writer import BadLine
from ctr.data.tabular import RecordParser, as_schema, read_records


@dataclass
class Chunk:
    """Consecutive raw rows of one input: `records` in the pipeline's own form (Criteo: lines
    as bytes; a schema: lists of fields) with their 1-based line numbers; `columns`: the
    records' column names, the label among them only if they carry it; `unread`: by line, the
    records that could not be read (their fields empty)."""

    origin: str
    records: list
    lines: List[int]
    columns: List[str]
    unread: Dict[int, BadLine] = field(default_factory=dict)


@dataclass
class Parsed:
    """A chunk's rows that parsed, ready for the model; `clean[i]`: whether record i did."""

    rows: Rows
    clean: np.ndarray
    problems: List[BadLine]


def _text(value) -> str:
    """A dict row's value as the file would hold it: None and NaN are empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


class FeaturePipeline(ABC):
    """Reads raw rows (files or dicts) into chunks and parses chunks into model inputs."""

    def __init__(self, description: dict) -> None:
        self.dense_names: List[str] = description["dense_names"]
        self.sparse_names: List[str] = description["sparse_names"]
        transform = description.get("dense_transform")
        self._transform = None if transform is None else (np.array(transform["shift"], np.float32),
                                                          np.array(transform["scale"], np.float32))

    @abstractmethod
    def chunks(self, path: Path, batch_size: int) -> Iterator[Chunk]:
        """The file's rows in chunks of at most `batch_size`."""

    @abstractmethod
    def from_dicts(self, rows: Sequence[Mapping]) -> Chunk:
        """Dict rows (column → value as written in the file) as one chunk."""

    @abstractmethod
    def _parse(self, chunk: Chunk) -> Parsed:
        """The chunk's clean rows before the dense normalisation."""

    @abstractmethod
    def keys(self, chunk: Chunk, names: Sequence[str]) -> List[List[str]]:
        """The named columns' raw values of every record."""

    def parse(self, chunk: Chunk) -> Parsed:
        parsed = self._parse(chunk)
        if self._transform is not None:
            shift, scale = self._transform
            parsed.rows.dense = (parsed.rows.dense - shift) * scale
        return parsed

    @staticmethod
    def _clean(chunk: Chunk, problems: List[BadLine]) -> np.ndarray:
        clean = np.ones(len(chunk.records), bool)
        index = {line: i for i, line in enumerate(chunk.lines)}
        clean[[index[p.line] for p in problems]] = False
        return clean

    @staticmethod
    def _column_indices(chunk: Chunk, names: Sequence[str]) -> List[int]:
        missing = [n for n in names if n not in chunk.columns]
        if missing:
            raise ValueError(f"{chunk.origin}: keys={list(names)} names {missing}, not among its columns {chunk.columns}")
        return [chunk.columns.index(n) for n in names]


class CriteoPipeline(FeaturePipeline):
    """Criteo TSV: 40 tab-separated fields, or 39 without the label (Criteo's test files)."""

    COLUMNS = ["label", *criteo.DENSE, *criteo.SPARSE]

    def __init__(self, description: dict) -> None:
        super().__init__(description)
        self._log1p = description["log1p"]
        self._dense_index = [criteo.DENSE.index(n) for n in self.dense_names]
        self._sparse_index = [criteo.SPARSE.index(n) for n in self.sparse_names]

    def chunks(self, path: Path, batch_size: int) -> Iterator[Chunk]:
        with criteo.open_binary(path) as stream:
            line = 1
            columns = None
            while True:
                lines, stream_error = criteo.read_lines(stream, batch_size)
                if stream_error:
                    raise criteo.CriteoFormatError(f"{path}:{line + len(lines)}: {stream_error}")
                if not lines:
                    return
                columns = columns or self._columns_of(path, lines[0])
                yield Chunk(str(path), lines, list(range(line, line + len(lines))), columns)
                line += len(lines)

    def _columns_of(self, path: Path, first: bytes) -> List[str]:
        width = first.count(b"\t") + 1
        if width not in (len(self.COLUMNS), len(self.COLUMNS) - 1):
            raise criteo.CriteoFormatError(f"{path}:1: {width} tab-separated fields; Criteo rows have "
                                           f"{len(self.COLUMNS)}, or {len(self.COLUMNS) - 1} without the label")
        return self.COLUMNS[len(self.COLUMNS) - width:]

    def from_dicts(self, rows: Sequence[Mapping]) -> Chunk:
        columns = self.COLUMNS[1:]
        lines = ["\t".join(_text(row.get(c)) for c in columns).encode() + b"\n" for row in rows]
        return Chunk("rows", lines, list(range(len(lines))), columns)

    def _parse(self, chunk: Chunk) -> Parsed:
        labelled = chunk.columns[0] == "label"
        lines = chunk.records if labelled else [b"0\t" + line for line in chunk.records]
        parsed = criteo.parse_lines(lines, chunk.lines[0], self._log1p)
        rows = Rows(parsed.dense[:, self._dense_index], parsed.ids[:, self._sparse_index], parsed.labels)
        return Parsed(rows, self._clean(chunk, parsed.problems), parsed.problems)

    def keys(self, chunk: Chunk, names: Sequence[str]) -> List[List[str]]:
        indices = self._column_indices(chunk, names)
        return [[fields[i].decode() if i < len(fields) else "" for i in indices]
                for fields in (line.rstrip(b"\r\n").split(b"\t") for line in chunk.records)]


class SchemaPipeline(FeaturePipeline):
    """A schema-described CSV/TSV: its main files' layout, joined with the side tables kept in the artifact."""

    def __init__(self, description: dict, side_tables: Path) -> None:
        super().__init__(description)
        self._schema = as_schema({**description["schema"], "root": str(side_tables)})
        self._bags = list(description.get("bag_lengths", {}))
        self._single = [n for n in self.sparse_names if n not in self._bags]
        self._parsers: Dict[tuple, RecordParser] = {}

    def chunks(self, path: Path, batch_size: int) -> Iterator[Chunk]:
        columns, records = read_records(path, self._schema)
        chunk = Chunk(str(path), [], [], columns)
        for line, fields, problem in records:
            chunk.records.append(fields), chunk.lines.append(line)
            if problem is not None:
                chunk.unread[line] = problem
            if len(chunk.records) == batch_size:
                yield chunk
                chunk = Chunk(str(path), [], [], columns)
        if chunk.records:
            yield chunk

    def from_dicts(self, rows: Sequence[Mapping]) -> Chunk:
        columns = list(dict.fromkeys(name for row in rows for name in row))
        records = [[_text(row.get(c)) for c in columns] for row in rows]
        return Chunk("rows", records, list(range(len(records))), columns)

    def _parser(self, columns: List[str]) -> RecordParser:
        key = tuple(columns)
        if key not in self._parsers:
            self._parsers[key] = RecordParser(self._schema, columns, "rows to score", self._schema.root)
        return self._parsers[key]

    def _parse(self, chunk: Chunk) -> Parsed:
        label = self._schema.label.column
        columns, records = chunk.columns, chunk.records
        if label not in columns:
            columns, records = [*columns, label], [[*fields, "0"] for fields in records]
        unread = [chunk.unread.get(line) for line in chunk.lines]
        values, problems = self._parser(columns).parse(zip(chunk.lines, records, unread))
        n = len(values["label"])
        rows = Rows(
            dense=np.stack([values[name] for name in self.dense_names], 1) if self.dense_names
            else np.zeros((n, 0), np.float32),
            ids=np.stack([values[name] for name in self._single], 1) if self._single else np.zeros((n, 0), np.int64),
            labels=values["label"],
            bags={name: values[name] for name in self._bags},
        )
        return Parsed(rows, self._clean(chunk, problems), problems)

    def keys(self, chunk: Chunk, names: Sequence[str]) -> List[List[str]]:
        indices = self._column_indices(chunk, names)
        return [[fields[i] if i < len(fields) else "" for i in indices] for fields in chunk.records]


class FeaturesPipeline(FeaturePipeline):
    """Rows already in feature form (a synthetic-data model): dense values and integer ids by feature name."""

    def chunks(self, path: Path, batch_size: int) -> Iterator[Chunk]:
        raise ValueError(f"input={path}: this artifact was trained on synthetic rows, which have no raw file layout; "
                         "score rows of feature values through ctr.inference.load(...).predict")

    def from_dicts(self, rows: Sequence[Mapping]) -> Chunk:
        return Chunk("rows", list(rows), list(range(len(rows))), list(self.dense_names) + list(self.sparse_names))

    def _parse(self, chunk: Chunk) -> Parsed:
        dense, ids, problems = [], [], []
        for line, row in zip(chunk.lines, chunk.records):
            try:
                values = ([float(row[n]) for n in self.dense_names], [int(row[n]) for n in self.sparse_names])
            except (KeyError, TypeError, ValueError) as error:
                problems.append(BadLine(line, "value", f"needs numbers for {chunk.columns}: {error!r}"))
                continue
            dense.append(values[0]), ids.append(values[1])
        rows = Rows(np.array(dense, np.float32).reshape(len(dense), len(self.dense_names)),
                    np.array(ids, np.int64).reshape(len(ids), len(self.sparse_names)), np.zeros(len(dense), np.float32))
        return Parsed(rows, self._clean(chunk, problems), problems)

    def keys(self, chunk: Chunk, names: Sequence[str]) -> List[List[str]]:
        return [[_text(row.get(n)) for n in names] for row in chunk.records]


def feature_pipeline(description: dict, side_tables: Optional[Path] = None) -> FeaturePipeline:
    """The pipeline `pipeline.json` describes (`ctr.train.export.describe_pipeline`)."""
    kind = description["kind"]
    if kind == "criteo":
        return CriteoPipeline(description)
    if kind == "schema":
        return SchemaPipeline(description, side_tables)
    if kind == "features":
        return FeaturesPipeline(description)
    raise ValueError(f"pipeline kind {kind!r}: expected criteo, schema or features")

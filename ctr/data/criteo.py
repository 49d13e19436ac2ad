"""The Criteo TSV format: its files, its columns, and turning its lines into rows.

A line is `label \\t I1 .. I13 \\t C1 .. C26 \\n`: a 0/1 label, 13 integer counts and 26
categorical values written as 8 hex digits (32-bit hashes); any feature may be empty.
Two layouts exist: Kaggle's (`train.txt`, any `*.txt`/`*.tsv`) and the 1TB logs'
(`day_0` .. `day_23`), each optionally gzipped. A directory holding neither by name is read
by content: its files whose first line has Criteo's 40 tab-separated fields (a Criteo
sample saved as `sample.csv`), in name order.

Integers: empty → 0, negative → 0, then log(1+x) unless `log1p` is off.
Categoricals: C_j's 32-bit value v becomes id = splitmix64((j+1)·2^33 + v) >> 1, and an
empty C_j becomes splitmix64((j+1)·2^33 + 2^32) >> 1. The input to splitmix64 is
distinct for every (feature, value) pair, so ids differ across features and never
collide before the final shift; the same value gives the same id everywhere.
"""

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ctr.data.ids import splitmix64, to_id
from ctr.data.shard_writer import BadLine

DENSE: List[str] = [f"I{i}" for i in range(1, 14)]
SPARSE: List[str] = [f"C{i}" for i in range(1, 27)]
NUM_FIELDS = 1 + len(DENSE) + len(SPARSE)

# One C-speed match decides a line is clean; only lines failing it are diagnosed field by
# field. Integers are limited to 18 digits so that they always fit int64.
_CLEAN_LINE = re.compile(rb"[01](?:\t(?:-?[0-9]{1,18})?){13}(?:\t(?:[0-9a-fA-F]{8})?){26}\n?")
_INT = re.compile(rb"-?[0-9]{1,18}")
_HEX = re.compile(rb"[0-9a-fA-F]{8}")
_DAY_FILE = re.compile(r"day_(\d+)(\.gz)?")
_KAGGLE_FILE = re.compile(r".+\.(txt|tsv)(\.gz)?")
_SCHEMA_SAMPLE_LINES = 100


class CriteoFormatError(ValueError):
    """Input that cannot be read as Criteo TSV; the message names the file, line and problem."""


@dataclass(frozen=True)
class CriteoFile:
    """One input file; `day` is its day number in the 1TB layout, else None."""

    path: Path
    day: Optional[int]


@dataclass
class ParsedLines:
    """Clean rows of a block of lines, and the 1-based line numbers and problems of the rest."""

    dense: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    missing: np.ndarray
    negative: np.ndarray
    raw_max: np.ndarray
    problems: List[BadLine]


def discover(path: Path) -> List[CriteoFile]:
    """The Criteo files at `path` (a file, or a directory of one layout), in reading order.

    Fails before any work on a missing path, an empty file, a directory holding both
    layouts or none, or files whose lines have different numbers of fields.
    """
    path = Path(path)
    if not path.exists():
        raise CriteoFormatError(f"input {path} does not exist")
    if path.is_file():
        files = [CriteoFile(path, _day_of(path.name))]
    else:
        days = sorted((CriteoFile(p, _day_of(p.name)) for p in path.iterdir() if _DAY_FILE.fullmatch(p.name)),
                      key=lambda f: f.day)
        kaggle = [CriteoFile(p, None) for p in sorted(path.iterdir()) if _KAGGLE_FILE.fullmatch(p.name)]
        if days and kaggle:
            raise CriteoFormatError(
                f"input {path} mixes the day_N layout ({days[0].path.name}, ...) with the Kaggle layout "
                f"({kaggle[0].path.name}, ...); put each in its own directory"
            )
        files = days or kaggle or [CriteoFile(p, None) for p in sorted(path.iterdir()) if _criteo_content(p)]
        if not files:
            raise CriteoFormatError(f"input {path} holds no Criteo files (day_N[.gz], *.txt/*.tsv[.gz], or files "
                                    f"whose first line has {NUM_FIELDS} tab-separated fields)")
    _check_schemas(files)
    return files


def _criteo_content(path: Path) -> bool:
    """Whether `path` is a file whose first line has Criteo's number of tab-separated fields."""
    if not path.is_file() or path.name.startswith("."):
        return False
    try:
        with open_binary(path) as stream:
            lines, _ = read_lines(stream, 1)
    except (OSError, EOFError, zlib.error):
        return False
    return bool(lines) and lines[0].count(b"\t") + 1 == NUM_FIELDS


def _day_of(name: str) -> Optional[int]:
    match = _DAY_FILE.fullmatch(name)
    return int(match.group(1)) if match else None


def open_binary(path: Path):
    """The file's bytes, decompressed if it is gzipped; seekable either way."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_lines(stream, count: int) -> Tuple[List[bytes], Optional[str]]:
    """Up to `count` lines, and what went wrong if a gzip stream broke off (truncated or corrupt)."""
    lines = []
    try:
        for _ in range(count):
            line = stream.readline()
            if not line:
                break
            lines.append(line)
    except (EOFError, OSError, zlib.error) as error:
        return lines, f"truncated or corrupt gzip stream ({error})"
    return lines, None


def _check_schemas(files: Sequence[CriteoFile]) -> None:
    """Every file must be non-empty and have 40 fields on most of its first lines."""
    counts = {}
    for file in files:
        with open_binary(file.path) as stream:
            lines, error = read_lines(stream, _SCHEMA_SAMPLE_LINES)
        if error and not lines:
            raise CriteoFormatError(f"{file.path}: {error}")
        widths = [line.count(b"\t") + 1 for line in lines if line.strip()]
        if not widths:
            raise CriteoFormatError(f"{file.path} is empty")
        counts[file.path] = max(set(widths), key=widths.count)
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{p.name}: {n} fields" for p, n in counts.items())
        raise CriteoFormatError(f"mixed schemas in the input ({listing}); all files must have the same layout")
    width = next(iter(counts.values()))
    if width != NUM_FIELDS:
        hint = " (a Criteo test file without labels?)" if width == NUM_FIELDS - 1 else ""
        raise CriteoFormatError(
            f"{files[0].path}: lines have {width} tab-separated fields, Criteo TSV has {NUM_FIELDS}{hint}"
        )


def check_columns(dense: Optional[Sequence[str]], sparse: Optional[Sequence[str]]) -> Tuple[List[str], List[str]]:
    """The dense and sparse columns to keep (None: all), failing on a name Criteo does not have."""
    chosen = []
    for key, names, known in (("dense_columns", dense, DENSE), ("sparse_columns", sparse, SPARSE)):
        names = list(known if names is None else names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise CriteoFormatError(f"{key} names {unknown}, which are not Criteo {key.split('_')[0]} columns {known}")
        chosen.append(names)
    return chosen[0], chosen[1]


def parse_lines(lines: Sequence[bytes], first_line: int, log1p: bool) -> ParsedLines:
    """Parses clean lines into rows (all 13 dense and 26 sparse columns) and diagnoses the others."""
    problems = []
    clean = []
    for offset, line in enumerate(lines):
        if _CLEAN_LINE.fullmatch(line):
            clean.append(line)
        else:
            problems.append(BadLine(first_line + offset, *diagnose(line)))
    table = _field_table(clean)
    labels = (table[:, 0] == b"1").astype(np.float32)
    ints = table[:, 1 : 1 + len(DENSE)]
    missing_int = ints == b""
    counts = np.where(missing_int, b"0", ints).astype(np.int64)
    negative = counts < 0
    counts = np.maximum(counts, 0)
    dense = (np.log1p(counts) if log1p else counts).astype(np.float32)
    ids, missing_cat = categorical_ids(table[:, 1 + len(DENSE) :])
    return ParsedLines(
        dense=dense, ids=ids, labels=labels,
        missing=np.concatenate([missing_int.sum(0), missing_cat.sum(0)]),
        negative=negative.sum(0),
        raw_max=counts.max(0, initial=0),
        problems=problems,
    )


def _field_table(clean: Sequence[bytes]) -> np.ndarray:
    """The fields of clean lines as a byte-string array [n, 40], split in one C call."""
    if not clean:
        return np.empty((0, NUM_FIELDS), dtype="S1")
    fields = b"".join(clean).replace(b"\n", b"\t").split(b"\t")
    return np.array(fields[: len(clean) * NUM_FIELDS]).reshape(len(clean), NUM_FIELDS)


def categorical_ids(hex_values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """int64 ids [n, 26] of 8-hex-digit (or empty) byte strings [n, 26], and where they were empty.

    >>> categorical_ids(np.array([[b"68fd1e64"] + [b""] * 25]))[0][0, :2].tolist()
    [7611814336352908041, 6564264386387387573]
    """
    n, num_features = hex_values.shape
    empty = hex_values == b""
    filled = np.where(empty, b"00000000", hex_values).astype("S8")
    values = np.frombuffer(bytes.fromhex(filled.tobytes().decode("ascii")), dtype=">u4").reshape(n, num_features)
    feature = (np.arange(1, num_features + 1, dtype=np.uint64) << np.uint64(33))[None, :]
    keys = feature | np.where(empty, np.uint64(1 << 32), values.astype(np.uint64))
    return to_id(splitmix64(keys)), empty


def diagnose(line: bytes) -> Tuple[str, str]:
    """What is wrong with a line that is not clean Criteo TSV: (kind, problem in words).

    Only the last line of a file can lack its newline, so a bad line without one was cut short.
    """
    kind, message = _field_problem(line)
    if kind != "blank line" and not line.endswith(b"\n"):
        return "truncated last line", f"truncated last line (no newline at end of file): {message}"
    return kind, message


def _field_problem(line: bytes) -> Tuple[str, str]:
    if not line.strip(b"\r\n\t "):
        return "blank line", "blank line"
    if b"\r" in line:
        return "carriage return", "stray carriage return (\\r); convert CRLF line endings to LF"
    fields = line.rstrip(b"\n").split(b"\t")
    if len(fields) != NUM_FIELDS:
        return "field count", f"{len(fields)} fields, expected {NUM_FIELDS}"
    if fields[0] not in (b"0", b"1"):
        return "label", f"label {fields[0]!r} is not 0 or 1"
    for name, value in zip(DENSE, fields[1:]):
        if value and not _INT.fullmatch(value):
            return "integer", f"integer feature {name} is {value!r}, not an integer of at most 18 digits"
    for name, value in zip(SPARSE, fields[1 + len(DENSE) :]):
        if value and not _HEX.fullmatch(value):
            return "categorical", f"categorical feature {name} is {value!r}, not 8 hex digits"
    return "unparseable", "unparseable line"

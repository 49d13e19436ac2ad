"""The schema of a delimited (CSV/TSV) data set, as typed config: `data.schema` in `configs/data/*.yaml`.

It says which files to read and how (delimiter, encoding, header), which column is the
label and how to binarise it, which columns are dense and how to transform them, which
become categorical features (single ids, bags, bucketised numbers, shared vocabularies),
which side tables to join, and how to split. `ctr.data.tabular` applies it.
"""

import codecs
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import List, Optional

from omegaconf import MISSING


@dataclass
class DelimitedFileConfig:
    """How to read one delimited file. Without a header, `columns` names the fields."""

    delimiter: str = ","
    encoding: str = "utf-8"
    header: bool = True
    columns: List[str] = field(default_factory=list)


@dataclass
class LabelConfig:
    """label = 1 if column >= `threshold`; with no threshold the column must hold 0 or 1."""

    column: str = MISSING
    threshold: Optional[float] = None


class Normalization(StrEnum):
    """`normalize` of a dense feature (see `DenseConfig`)."""

    none = "none"
    standardize = "standardize"
    minmax = "minmax"


class SplitRule(StrEnum):
    """`split.by` (see `SplitConfig`)."""

    ratio = "ratio"
    timestamp = "timestamp"
    files = "files"
    order = "order"


class ValRule(StrEnum):
    """`split.val_by` (see `SplitConfig`)."""

    random = "random"
    order = "order"


class OtherColumns(StrEnum):
    """`other_columns` (see `SchemaConfig`)."""

    none = "none"
    categorical = "categorical"


class DatePart(StrEnum):
    """`derived[].date_part` (see `DerivedConfig`)."""

    year = "year"
    month = "month"
    day = "day"
    weekday = "weekday"
    hour = "hour"


@dataclass
class DenseConfig:
    """A numeric feature. Empty → `fill`; then log(1+max(x, 0)) if `log1p`; then `normalize`:
    none, standardize (mean 0, variance 1) or minmax (to [0, 1]), with statistics of the
    train rows computed in the preprocessing pass and applied when the shards are read."""

    column: str = MISSING
    fill: float = 0.0
    log1p: bool = False
    normalize: Normalization = Normalization.none


@dataclass
class SparseConfig:
    """A categorical feature named `name`, hashed to stable 64-bit ids (`ctr.data.tabular.hash_ids`).

    One column and no `delimiter`: one id per row (an empty value has its own id).
    Several columns, a `delimiter` or `flags`: a bag of ids, empty members dropped, at most
    `max_length` kept (default: the number of columns). `flags`: the columns hold 0/1, and
    the bag is the names of the columns set to 1 (one-hot genre columns). `boundaries`:
    the column is a number, and its bucket (`numpy.searchsorted(boundaries, x, "right")`)
    is the category. Features naming the same `table` share one vocabulary and one
    embedding table.
    """

    name: str = MISSING
    columns: List[str] = MISSING
    delimiter: Optional[str] = None
    flags: bool = False
    max_length: Optional[int] = None
    boundaries: Optional[List[float]] = None
    table: Optional[str] = None


@dataclass
class DerivedConfig:
    """A column computed from raw columns (of the rows or a joined table) while reading, named
    `name`, usable as a dense, sparse or label column.

    Exactly one rule: `prefix: N` (the first N characters of `column`, e.g. a zip-code
    prefix); `substring: [start, stop]` (Python slice of `column`); `date_part` of `column`
    parsed with `date_format` (`datetime.strptime`, e.g. `"%d-%b-%Y"`; the part as a number);
    or `cross: [a, b, ...]` (the columns' values joined into one value, to hash as one
    categorical feature). Empty inputs give an empty value.
    """

    name: str = MISSING
    column: Optional[str] = None
    prefix: Optional[int] = None
    substring: Optional[List[int]] = None
    date_format: Optional[str] = None
    date_part: Optional[DatePart] = None
    cross: List[str] = field(default_factory=list)


@dataclass
class JoinConfig(DelimitedFileConfig):
    """A side table (user or item attributes) whose `key` column matches the rows' `join_column`.

    Its other columns join each row. Rows without a match get empty values; past
    `max_unmatched_fraction` of them, preprocessing fails.
    """

    path: str = MISSING
    key: str = MISSING
    join_column: str = MISSING
    max_unmatched_fraction: float = 0.0


@dataclass
class SplitConfig:
    """How rows become train, val and test.

    `by`: ratio (each row drawn with a seeded hash of its position), order (the last
    `test_ratio` of the rows in file order), timestamp (the latest `test_ratio` of rows by
    `timestamp_column`; rows tied at the cut-off go in file order, the later ones to test,
    so test has exactly the requested size) or files (`test_files` are test).
    val: the rows of `val_files` (schema keys), else `val_ratio` of the non-test rows, drawn
    at random (`val_by: random`) or the last ones in time order (timestamp) or file order
    (the other rules) (`val_by: order`).
    `dedup_key`: test rows whose key columns also appear in a non-test row are dropped.
    """

    by: SplitRule = SplitRule.ratio
    test_ratio: float = 0.2
    val_ratio: float = 0.0
    val_by: ValRule = ValRule.random
    timestamp_column: Optional[str] = None
    dedup_key: List[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class SchemaConfig(DelimitedFileConfig):
    """A data set of delimited files under `root` (relative names are taken from there).

    `other_columns: categorical` makes every column (of the rows, the joined tables and
    `derived`) that is not the label, a dense column, in a `sparse` entry or in `ignore` a
    categorical feature of its own, named as the column (a wide file in a few lines).
    """

    root: str = "."
    files: List[str] = MISSING
    val_files: List[str] = field(default_factory=list)
    test_files: List[str] = field(default_factory=list)
    label: LabelConfig = field(default_factory=LabelConfig)
    dense: List[DenseConfig] = field(default_factory=list)
    sparse: List[SparseConfig] = field(default_factory=list)
    other_columns: OtherColumns = OtherColumns.none
    ignore: List[str] = field(default_factory=list)
    derived: List[DerivedConfig] = field(default_factory=list)
    joins: List[JoinConfig] = field(default_factory=list)
    split: SplitConfig = field(default_factory=SplitConfig)


class SchemaError(ValueError):
    """A schema value that cannot work; the message names its key."""


def check_schema(schema: SchemaConfig) -> None:
    """Fails on values that would otherwise crash late (after reading all the data), naming the key.

    Feature names become shard file names (`{shard}.{name}.npy`), so they must be file-name safe.
    """
    files = [("", schema)] + [(f".joins[{j}]", join) for j, join in enumerate(schema.joins)]
    for where, spec in files:
        if len(spec.delimiter) != 1:
            raise SchemaError(f"data.schema{where}.delimiter={spec.delimiter!r}: expected one character")
        try:
            codecs.lookup(spec.encoding)
        except LookupError:
            raise SchemaError(f"data.schema{where}.encoding={spec.encoding!r} is not an encoding Python knows "
                              "(e.g. utf-8, latin-1)") from None
    names = [(f"dense[{j}].column", d.column) for j, d in enumerate(schema.dense)]
    names += [(f"sparse[{j}].name", s.name) for j, s in enumerate(schema.sparse)]
    for key, name in names:
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise SchemaError(f"data.schema.{key}={name!r}: a feature name names shard files, so it must be "
                              "non-empty and hold no '/', '\\' or NUL")
    for j, dense in enumerate(schema.dense):
        if not math.isfinite(dense.fill):
            raise SchemaError(f"data.schema.dense[{j}].fill={dense.fill}: expected a finite number")
    for j, sparse in enumerate(schema.sparse):
        if sparse.max_length is not None and sparse.max_length < 1:
            raise SchemaError(f"data.schema.sparse[{j}].max_length={sparse.max_length}: expected >= 1 (or null)")
        if sparse.delimiter is not None and not sparse.delimiter:
            raise SchemaError(f"data.schema.sparse[{j}].delimiter='': expected a non-empty separator (or null)")
        if not sparse.columns:
            raise SchemaError(f"data.schema.sparse[{j}].columns is empty: name at least one column")

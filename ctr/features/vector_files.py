"""Vectors on disk, keyed by the data's raw 64-bit ids, and the table rows they go to.

Written by `launch/export_embeddings.py`, read by retrieval (`launch/similar.py`) and by
`embedding.init.<table>.vectors` (`ctr.train.table_init`). Two formats:

- a **vectors directory**, one per table:

      vectors.npy  float32 [rows, dim]
      keys.npy     int64 [rows]: the raw id each row holds where the hashing keeps raw ids
                   (`vocab`: ids as the data stores them, e.g. `hash_ids(table, value)` for
                   CSV data), else the table row
      meta.json    {"table", "dim", "rows", "keys": "raw" | "row", "hashing", "source_run"}

  written whole into a temporary sibling and renamed into place, replacing only a previous
  export of these three files;
- a **word2vec text file**: a first line `count dim`, then `count` lines `key v1 ... vdim`,
  the key a raw id.

Raw ids are placed through the table's own hashing (`FeatureHashing.rows_of`): a row that
several ids land on takes their mean, ids without a row of their own (a vocabulary's
out-of-vocabulary row) are skipped, and rows no id lands on keep their initialisation;
`keys: row` keys are table rows already, placed as they are. Nothing in these files is
unpickled (`np.load(allow_pickle=False)`, JSON, text).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from ctr.atomic import atomic_directory
from ctr.features.hashing import FeatureHashing

VECTORS_FILE, KEYS_FILE, META_FILE = "vectors.npy", "keys.npy", "meta.json"
FILES = (VECTORS_FILE, KEYS_FILE, META_FILE)
KEY_KINDS = ("raw", "row")


class VectorsFileError(ValueError):
    """A vectors file that cannot be read as one; the message names the file (and line), and
    the `embedding.init` table where it was read for one."""


@dataclass
class Vectors:
    """Vectors read from `path`: `keys[i]` (a raw id, or a row when `meta["keys"]` is `row`) →
    `vectors[i]`. `meta`: a directory's meta.json; for a word2vec file its dim, rows and keys."""

    path: Path
    keys: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, dim]
    meta: dict

    @property
    def keys_kind(self) -> str:
        return self.meta["keys"]


def write_vectors(directory: Path, vectors: np.ndarray, keys: np.ndarray, table: str, keys_are: str, hashing: str,
                  source_run: str) -> dict:
    """Writes one table's vectors and keys into `directory`; returns its meta."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or set(p.name for p in directory.iterdir()) - set(FILES)):
        raise ValueError(f"{directory}: exists and holds files other than an export's {list(FILES)}; "
                         "refusing to replace it")
    meta = {"table": table, "dim": int(vectors.shape[1]), "rows": int(vectors.shape[0]), "keys": keys_are,
            "hashing": hashing, "source_run": source_run}
    with atomic_directory(directory) as tmp:
        np.save(tmp / VECTORS_FILE, np.ascontiguousarray(vectors, np.float32))
        np.save(tmp / KEYS_FILE, np.ascontiguousarray(keys, np.int64))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def read_vectors(path: Path, table: Optional[str] = None) -> Vectors:
    """The vectors at `path` (a vectors directory or a word2vec text file); `table`: the
    `embedding.init` table they are read for, named in errors."""
    path = Path(path)
    if path.is_dir():
        return _read_directory(path, table)
    if path.is_file():
        return _read_word2vec(path, table)
    setting = f"embedding.init.{table}.vectors=" if table else ""
    raise VectorsFileError(f"{setting}{str(path)!r}: no such file or directory")


def _where(path: Path, table: Optional[str], line: Optional[int] = None) -> str:
    """`path[:line] (embedding.init.<table>)`: where a problem is, for error messages."""
    return f"{path}{f':{line}' if line else ''}{f' (embedding.init.{table})' if table else ''}"


def _load_npy(path: Path, table: Optional[str]) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise VectorsFileError(f"{_where(path, table)}: not a readable .npy array: {error}") from error


def _read_directory(path: Path, table: Optional[str]) -> Vectors:
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise VectorsFileError(f"{_where(path, table)}: a vectors directory needs {missing}")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as error:
        raise VectorsFileError(f"{_where(path / META_FILE, table)}: not valid JSON: {error}") from error
    vectors, keys = _load_npy(path / VECTORS_FILE, table), _load_npy(path / KEYS_FILE, table)
    where = _where(path, table)
    kind = meta.get("keys") if isinstance(meta, dict) else None
    if kind not in KEY_KINDS:
        raise VectorsFileError(f"{_where(path / META_FILE, table)}: keys={kind!r}, expected one of {list(KEY_KINDS)}")
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise VectorsFileError(f"{where}: {VECTORS_FILE} is {vectors.dtype} of shape {vectors.shape}, expected float rows × dim")
    if keys.shape != (len(vectors),) or not np.issubdtype(keys.dtype, np.integer):
        raise VectorsFileError(f"{where}: {KEYS_FILE} is {keys.dtype} of shape {keys.shape}, expected {len(vectors)} integers")
    if (meta.get("rows"), meta.get("dim")) != vectors.shape:
        raise VectorsFileError(f"{where}: {META_FILE} says rows={meta.get('rows')}, dim={meta.get('dim')}, "
                               f"but {VECTORS_FILE} is {vectors.shape[0]} × {vectors.shape[1]}")
    return _checked(Vectors(path, keys.astype(np.int64), vectors.astype(np.float32), meta), table)


def _read_word2vec(path: Path, table: Optional[str]) -> Vectors:
    keys, rows = [], []
    with open(path, encoding="utf-8") as lines:
        header = next(lines, "").split()
        if len(header) != 2 or not all(f.isdigit() for f in header):
            raise VectorsFileError(f"{_where(path, table, 1)}: expected the word2vec header 'count dim'")
        count, dim = int(header[0]), int(header[1])
        for number, line in enumerate(lines, start=2):
            fields = line.split()
            if not fields:
                continue
            key, values = _parse_row(_where(path, table, number), fields, dim)
            keys.append(key)
            rows.append(values)
    if len(rows) != count:
        raise VectorsFileError(f"{_where(path, table)}: the header says {count} vectors, the file has {len(rows)}")
    meta = {"dim": dim, "rows": count, "keys": "raw"}
    return _checked(Vectors(path, np.array(keys, dtype=np.int64), np.array(rows, dtype=np.float32).reshape(count, dim),
                            meta), table)


def _parse_row(where: str, fields: list, dim: int) -> Tuple[int, list]:
    if len(fields) != dim + 1:
        raise VectorsFileError(f"{where}: {len(fields) - 1} values, expected a key and {dim}")
    try:
        key = int(fields[0])
    except ValueError:
        raise VectorsFileError(f"{where}: key {fields[0]!r} is not an integer id (the data's raw 64-bit id)") from None
    try:
        return key, [float(v) for v in fields[1:]]
    except ValueError as error:
        raise VectorsFileError(f"{where}: {error}") from None


def _checked(vectors: Vectors, table: Optional[str]) -> Vectors:
    where = _where(vectors.path, table)
    if not np.isfinite(vectors.vectors).all():
        raise VectorsFileError(f"{where}: holds non-finite values (nan or inf)")
    unique, counts = np.unique(vectors.keys, return_counts=True)
    if (counts > 1).any():
        raise VectorsFileError(f"{where}: key {int(unique[counts > 1][0])} appears more than once")
    return vectors


def place(vectors: Vectors, table: str, feature: str, rows: int, dim: int, hashing: FeatureHashing) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, values): each table row the file covers and its vector, for a `rows` × `dim`
    table looked up by `feature` (one of its KJT keys)."""
    where = _where(vectors.path, table)
    if vectors.vectors.shape[1] != dim:
        raise VectorsFileError(f"{where}: vectors are {vectors.vectors.shape[1]} wide, table {table} is {dim} wide")
    keys = torch.from_numpy(vectors.keys)
    if vectors.keys_kind == "row":
        outside = keys[(keys < 0) | (keys >= rows)]
        if len(outside):
            raise VectorsFileError(f"{where}: row key {int(outside[0])} is outside table {table}'s {rows} rows")
        placed = keys
    else:
        placed = hashing.rows_of(feature, keys)
    own = placed >= 0
    placed, values = placed[own], torch.from_numpy(vectors.vectors)[own].double()
    covered, slot = torch.unique(placed, return_inverse=True)
    sums = torch.zeros(len(covered), dim, dtype=torch.float64).index_add_(0, slot, values)
    counts = torch.zeros(len(covered), dtype=torch.float64).index_add_(0, slot, torch.ones(len(slot), dtype=torch.float64))
    return covered, (sums / counts[:, None]).float()

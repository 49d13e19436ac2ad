"""Pre-trained vectors from a file, and the table rows they go to.

Two formats, keyed by the data's raw 64-bit ids (the ids in the shards, before any table
size is applied; `ctr.data.tabular.hash_ids` of a CSV value):

- a **vectors directory** (what `launch/export_embeddings.py` writes): `vectors.npy`
  (float32, rows × dim), `keys.npy` (int64, one per row) and `meta.json`
  (`{"table", "dim", "rows", "keys": "raw"|"row", "hashing", "source_run"}`); `keys: row`
  means the keys are table rows already (a hashing that keeps no raw ids), placed as they are;
- a **word2vec text file**: a first line `count dim`, then `count` lines `key v1 ... vdim`,
  the key a raw id.

Raw ids are placed through the table's own hashing (`FeatureHashing.rows_of`): a row that
several ids land on takes their mean, ids without a row of their own (a vocabulary's
out-of-vocabulary row) are skipped, and rows no id lands on keep their initialisation.
Nothing in these files is unpickled (`np.load(allow_pickle=False)`, JSON, text).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from ctr.features.hashing import FeatureHashing

VECTORS_FILE = "vectors.npy"
KEYS_FILE = "keys.npy"
META_FILE = "meta.json"
KEY_KINDS = ("raw", "row")


class VectorsFileError(ValueError):
    """A vectors file that cannot be read as one; the message names the file (and line) and the table."""


@dataclass
class Vectors:
    """Vectors read from `path`: `keys[i]` (a raw id, or a row when `keys_kind` is `row`) → `vectors[i]`."""

    path: Path
    keys: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, dim]
    keys_kind: str = "raw"


def read_vectors(path: Path, table: str) -> Vectors:
    """The vectors at `path` (a vectors directory or a word2vec text file), for `table` (named in errors)."""
    if path.is_dir():
        return _read_directory(path, table)
    if path.is_file():
        return _read_word2vec(path, table)
    raise VectorsFileError(f"embedding.init.{table}.vectors={str(path)!r}: no such file or directory")


def _load_npy(path: Path, table: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise VectorsFileError(f"{path} (embedding.init.{table}): not a readable .npy array: {error}") from error


def _read_directory(path: Path, table: str) -> Vectors:
    missing = [name for name in (VECTORS_FILE, KEYS_FILE, META_FILE) if not (path / name).is_file()]
    if missing:
        raise VectorsFileError(f"{path} (embedding.init.{table}): a vectors directory needs {missing}")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as error:
        raise VectorsFileError(f"{path / META_FILE} (embedding.init.{table}): not valid JSON: {error}") from error
    vectors, keys = _load_npy(path / VECTORS_FILE, table), _load_npy(path / KEYS_FILE, table)
    where = f"{path} (embedding.init.{table})"
    kind = meta.get("keys") if isinstance(meta, dict) else None
    if kind not in KEY_KINDS:
        raise VectorsFileError(f"{path / META_FILE} (embedding.init.{table}): keys={kind!r}, expected one of {list(KEY_KINDS)}")
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise VectorsFileError(f"{where}: {VECTORS_FILE} is {vectors.dtype} of shape {vectors.shape}, expected float rows × dim")
    if keys.shape != (len(vectors),) or not np.issubdtype(keys.dtype, np.integer):
        raise VectorsFileError(f"{where}: {KEYS_FILE} is {keys.dtype} of shape {keys.shape}, expected {len(vectors)} integers")
    if (meta.get("rows"), meta.get("dim")) != vectors.shape:
        raise VectorsFileError(f"{where}: {META_FILE} says rows={meta.get('rows')}, dim={meta.get('dim')}, "
                               f"but {VECTORS_FILE} is {vectors.shape[0]} × {vectors.shape[1]}")
    return _checked(Vectors(path, keys.astype(np.int64), vectors.astype(np.float32), kind), table)


def _read_word2vec(path: Path, table: str) -> Vectors:
    keys, rows = [], []
    with open(path, encoding="utf-8") as lines:
        header = next(lines, "").split()
        if len(header) != 2 or not all(f.isdigit() for f in header):
            raise VectorsFileError(f"{path}:1 (embedding.init.{table}): expected the word2vec header 'count dim'")
        count, dim = int(header[0]), int(header[1])
        for number, line in enumerate(lines, start=2):
            fields = line.split()
            if not fields:
                continue
            key, values = _parse_row(path, number, fields, dim, table)
            keys.append(key)
            rows.append(values)
    if len(rows) != count:
        raise VectorsFileError(f"{path} (embedding.init.{table}): the header says {count} vectors, the file has {len(rows)}")
    return _checked(Vectors(path, np.array(keys, dtype=np.int64), np.array(rows, dtype=np.float32).reshape(count, dim)), table)


def _parse_row(path: Path, number: int, fields: list, dim: int, table: str) -> Tuple[int, list]:
    where = f"{path}:{number} (embedding.init.{table})"
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


def _checked(vectors: Vectors, table: str) -> Vectors:
    where = f"{vectors.path} (embedding.init.{table})"
    if not np.isfinite(vectors.vectors).all():
        raise VectorsFileError(f"{where}: holds non-finite values (nan or inf)")
    unique, counts = np.unique(vectors.keys, return_counts=True)
    if (counts > 1).any():
        raise VectorsFileError(f"{where}: key {int(unique[counts > 1][0])} appears more than once")
    return vectors


def place(vectors: Vectors, table: str, feature: str, rows: int, dim: int, hashing: FeatureHashing) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, values): each table row the file covers and its vector, for a `rows` × `dim`
    table looked up by `feature` (one of its KJT keys)."""
    where = f"{vectors.path} (embedding.init.{table})"
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

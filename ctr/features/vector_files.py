"""Exported embedding vectors on disk: one directory per table, read by retrieval and by
`embedding.init`.

    vectors.npy  float32 [rows, dim]
    keys.npy     int64 [rows]: the raw id each row holds where the hashing keeps raw ids
                 (`vocab`: ids as the data stores them, e.g. `hash_ids(table, value)` for CSV
                 data), else the table row
    meta.json    {"table", "dim", "rows", "keys": "raw" | "row", "hashing", "source_run"}

A directory is written whole into a temporary sibling and renamed into place, and
replaces only a previous export of these three files.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctr.atomic import atomic_directory

VECTORS_FILE, KEYS_FILE, META_FILE = "vectors.npy", "keys.npy", "meta.json"
FILES = (VECTORS_FILE, KEYS_FILE, META_FILE)
META_KEYS = ("table", "dim", "rows", "keys", "hashing", "source_run")


@dataclass
class TableVectors:
    """One table's exported rows and their keys, with the table's `meta.json`."""

    vectors: np.ndarray
    keys: np.ndarray
    meta: dict


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


def read_vectors(directory: Path) -> TableVectors:
    """A directory `write_vectors` wrote, its shapes checked against its meta.json; the
    arrays are read without pickles."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META_FILE).read_text())
        vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
        keys = np.load(directory / KEYS_FILE, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{directory}: not an export of vectors ({list(FILES)}): {error}") from error
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise ValueError(f"{directory / META_FILE}: lacks {missing}")
    expected = (meta["rows"], meta["dim"])
    if vectors.dtype != np.float32 or vectors.shape != expected or keys.dtype != np.int64 or keys.shape != expected[:1]:
        raise ValueError(f"{directory}: {VECTORS_FILE} is {vectors.dtype} {vectors.shape} and {KEYS_FILE} "
                         f"{keys.dtype} {keys.shape}; {META_FILE} expects float32 {expected} and int64 ({expected[0]},)")
    return TableVectors(vectors, keys, meta)

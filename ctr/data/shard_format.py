"""The on-disk layout of preprocessed shards, shared by the writer and the reader.

A shard directory holds, per shard i and column c, `{i:05d}.{c}.npy` (label float32,
dense columns float32, sparse columns int64 raw ids), and a `meta.json` written last:
the directory is valid only once that file exists and lists every shard's files.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

META_FILE = "meta.json"
FORMAT = "ctr-shards/1"


class InvalidShardDirectory(ValueError):
    """A directory that is not a complete, valid set of shards."""


def shard_file(directory: Path, shard: int, column: str) -> Path:
    return Path(directory) / f"{shard:05d}.{column}.npy"


def data_sha256(array: np.ndarray) -> str:
    """Checksum of an array's values (C order), as meta.json records them."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def read_meta(directory: Path) -> dict:
    """meta.json of a complete shard directory; refuses anything else with the reason."""
    directory = Path(directory)
    path = directory / META_FILE
    if not path.is_file():
        unfinished = " (preprocessing is unfinished: run it again to resume)" if any(directory.glob("progress*")) else ""
        raise InvalidShardDirectory(f"{directory} has no {META_FILE}, so it is not a complete shard directory{unfinished}")
    meta = parse_meta(path)
    for shard in meta["shards"]:
        for column in meta["columns"]:
            if not shard_file(directory, shard["index"], column).is_file():
                raise InvalidShardDirectory(f"{path} lists shard {shard['index']}, but its column {column} is missing")
    return meta


def parse_meta(path: Path) -> dict:
    """A meta.json's content, refused unless it is valid JSON in ctr's format (its shards unchecked)."""
    try:
        meta = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise InvalidShardDirectory(f"{path} is not valid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise InvalidShardDirectory(f"{path} has format {found!r}, expected {FORMAT!r}")
    return meta

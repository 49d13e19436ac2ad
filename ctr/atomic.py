"""Writes that leave a file whole or absent, never half-written: a temporary name, then a rename."""

import io
import json
import os
from pathlib import Path
from typing import Callable


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Writes through a temporary name, flushed to disk, then renames: `path` is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: object) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2).encode()))

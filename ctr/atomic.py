"""Writes that leave a file whole or absent, never half-written: a temporary name, then a rename."""

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


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


@contextlib.contextmanager
def atomic_directory(output: Path) -> Iterator[Path]:
    """A temporary sibling of `output` to fill; when the block ends without error it replaces
    `output` (whose own checks decided it may be replaced), else it is removed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=output.name + ".partial-", dir=output.parent))
    try:
        yield tmp
        if output.exists():
            shutil.rmtree(output)
        tmp.replace(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

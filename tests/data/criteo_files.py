"""Criteo TSV fixtures written by the tests themselves."""

import gzip
import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from tests.conftest import REPO

# As in configs/preprocess.yaml: $CTR_DATA_ROOT, else ../shared/data beside the repo.
SHARED_DATA = Path(os.environ.get("CTR_DATA_ROOT", REPO.parent / "shared" / "data"))


def criteo_lines(num_rows: int, seed: int = 0, first_index: int = 0) -> List[str]:
    """Valid Criteo lines; I1 holds the row's index (first_index + i) so a row can be traced back.

    About a tenth of the other fields are empty and some integers are negative, as in real logs.
    """
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(num_rows):
        label = str(int(rng.random() < 0.25))
        ints = [str(first_index + i)] + [
            "" if rng.random() < 0.1 else str(int(rng.integers(-2, 500))) for _ in range(12)
        ]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.zipf(1.3)) % (1 << 32):08x}" for _ in range(26)]
        lines.append("\t".join([label, *ints, *cats]) + "\n")
    return lines


def write_criteo(path: Path, lines: List[str], compress: Optional[bool] = None) -> Path:
    """Writes lines (gzipped when the name ends in .gz) and returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(lines).encode()
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def indexed_shards(directory: Path, num_rows: int, seed: int, shard_rows: int) -> Path:
    """Shards of `criteo_lines` preprocessed with log1p off, so that I1 reads back as each row's index."""
    from ctr.data.preprocess import preprocess

    path = write_criteo(directory / "train.txt", criteo_lines(num_rows, seed=seed))
    preprocess(str(path), str(directory / "out"), log1p=False, shard_rows=shard_rows, progress_bar=False)
    return directory / "out"

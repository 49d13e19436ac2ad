"""Trained runs and their artifacts on three layouts: Criteo TSV, a SparrowRecSys-like CSV
(Wide & Deep with a cross, bags and shared tables) and a generic schema CSV with a side table."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

from tests.conftest import REPO
from tests.data.criteo_files import SHARED_DATA, criteo_lines, write_criteo
from tests.data.test_tabular import HEADER, _lines, _write
from tests.hydra_config import ON_CPU, TINY_MODEL

# TINY's sizes; its Deep Crossing settings (model.*) only where the model is Deep Crossing.
TRAIN = [*(o for o in TINY_MODEL if not o.startswith("model.")), *ON_CPU, "distributed.nproc_per_node=1",
         "trainer.tensorboard=false"]
DEEP_CROSSING = [o for o in TINY_MODEL if o.startswith("model.")]
SPARROW = SHARED_DATA / "sparrowrecsys"
SPARROW_FILES = ["alt-regenerated-testsamples/testSamples_lizhzh8.csv",
                 "alt-regenerated-testsamples/testSamples_xiaokunliu.csv", "testSamples.csv"]
# A generic CSV: ratings joined with a users table, a log1p/minmax dense column, a delimited bag,
# a bag of three columns sharing the genre table, a joined categorical, and derived columns (a prefix,
# a cross of a main and a joined column).
GENERIC_SCHEMA = [
    "data.schema.files=[ratings.csv]",
    "data.schema.delimiter=','",
    "data.schema.header=true",
    "data.schema.columns=[]",
    "data.schema.joins=[{path: users.csv, key: user, join_column: user, delimiter: ',', header: true}]",
    "data.schema.label={column: rating, threshold: 4}",
    "data.schema.dense=[{column: count, log1p: true, normalize: minmax}, {column: age, normalize: standardize}]",
    "data.schema.sparse=[{name: user, columns: [user]}, {name: movie, columns: [movie]},"
    " {name: country, columns: [country]},"
    " {name: movieGenres, columns: [genres], delimiter: '|', max_length: 3, table: genre},"
    " {name: userGenres, columns: [g1, g2, g3], table: genre},"
    " {name: tsPrefix, columns: [tsPrefix]}, {name: userCountry, columns: [userCountry]}]",
    "data.schema.derived=[{name: tsPrefix, column: ts, prefix: 2}, {name: userCountry, cross: [user, country]}]",
    "data.schema.split={by: timestamp, timestamp_column: ts, test_ratio: 0.2, val_ratio: 0.1}",
]


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_failing(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-3000:]
    return proc


@dataclass
class Exported:
    """A trained run, its fp32 artifact, and a raw file of its training layout to score."""

    run_dir: Path
    artifact: Path
    raw: Path


def _train_and_export(root: Path, overrides: List[str], raw: Path) -> Exported:
    run_dir, artifact = root / "run", root / "fp32"
    run("launch/train.py", *overrides, *TRAIN, f"hydra.run.dir={run_dir}")
    run("launch/export.py", f"run_dir={run_dir}", "precision=fp32", f"output={artifact}")
    return Exported(run_dir, artifact, raw)


@pytest.fixture(scope="session")
def criteo(tmp_path_factory) -> Exported:
    root = tmp_path_factory.mktemp("criteo")
    raw = write_criteo(root / "raw" / "train.txt", criteo_lines(900, seed=4))
    run("launch/preprocess.py", f"input={raw}", f"output={root / 'shards'}", "progress_bar=false",
        f"hydra.run.dir={root / 'pre'}")
    data = ["data=criteo", f"data.path={root / 'shards'}", "data.shuffle_buffer=256"]
    return _train_and_export(root, [*data, *DEEP_CROSSING], raw)


def _generic_files(root: Path) -> Path:
    root.mkdir(parents=True)
    _write(root / "ratings.csv", _lines(1500, seed=7), HEADER)
    users = [f"u{i},{18 + 3 * i},{['fr', 'de', 'us'][i % 3]}" for i in range(20)]
    _write(root / "users.csv", users, "user,age,country")
    return root / "ratings.csv"


@pytest.fixture(scope="session")
def generic(tmp_path_factory) -> Exported:
    root = tmp_path_factory.mktemp("generic")
    raw = _generic_files(root / "raw")
    data = ["data=movielens100k", f"data.path={root / 'shards'}", f"data.schema.root={root / 'raw'}", *GENERIC_SCHEMA]
    run("launch/preprocess.py", *data, "progress_bar=false", f"hydra.run.dir={root / 'pre'}")
    return _train_and_export(root, [*data, *DEEP_CROSSING], raw)


@pytest.fixture(scope="session")
def sparrow(tmp_path_factory) -> Exported:
    """The shipped SparrowRecSys config and Wide & Deep experiment on the first 600 rows of each file."""
    if not SPARROW.is_dir():
        pytest.skip(f"{SPARROW} is not present")
    root = tmp_path_factory.mktemp("sparrow")
    for name in SPARROW_FILES:
        (root / "raw" / name).parent.mkdir(parents=True, exist_ok=True)
        with open(SPARROW / name) as source, open(root / "raw" / name, "w") as sample:
            sample.writelines(line for _, line in zip(range(601), source))
    data = [f"data.path={root / 'shards'}", f"data.schema.root={root / 'raw'}"]
    run("launch/preprocess.py", "data=sparrowrecsys", *data, "progress_bar=false", f"hydra.run.dir={root / 'pre'}")
    experiment = ["+experiment=sparrowrecsys_wide_deep", *data, "embedding.num_embeddings_per_feature={genre: 100}",
                  "model.wide.crosses=[{features: [movieId, 'userRatedMovies[0]'], num_embeddings: 1000}]"]
    return _train_and_export(root, experiment, root / "raw" / "testSamples.csv")

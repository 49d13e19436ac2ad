"""CSV preprocessing by many workers: a first pass plans the splits, then the parts are written;
the same bytes for any number of workers or ranks, the same rows as reading the files whole,
and resume after a killed worker."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

from ctr.data import tabular
from ctr.data.parallel_preprocess import PARTS_DIR
from ctr.data.schema import DenseConfig, JoinConfig, LabelConfig, SchemaConfig, SparseConfig, SplitConfig
from ctr.data.shards import SPLITS, ShardSource
from ctr.data.tabular import preprocess_csv
from tests.conftest import REPO
from tests.data.criteo_files import SHARED_DATA
from tests.data.test_parallel_preprocess import _contents, _interrupt, kill_a_worker_midway
from tests.data.test_tabular_training import _data_config

HEADER = "user,movie,rating,ts,index,title,g1,g2,g3"
# Small parts, blocks and shards, so that each file is cut into many parts of several shards.
_SMALL = {"shard_rows": 50, "chunk_rows": 16, "progress_bar": False}


def _records(n: int, first: int, seed: int) -> List[str]:
    """Ratings whose `index` column holds the record's index over both files; timestamps tie often;
    every 9th title holds a quoted line break, so that the record spans two lines."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(first, first + n):
        title = f'"part one\npart two of {i}"' if i % 9 == 4 else f"title {i}"
        genres = ",".join(rng.choice(["Action", "Drama", "", ""], 3))
        records.append(f"u{rng.integers(0, 25)},m{rng.integers(0, 30)},{rng.integers(1, 6)},{1000 + i * 7 % 40},"
                       f"{i},{title},{genres}\n")
    return records


def _write(path: Path, records: List[str]) -> Tuple[Path, List[int]]:
    """Writes the file; returns it and the byte offsets of lines that continue a record."""
    text, continued = HEADER + "\n", []
    for record in records:
        if "\n" in record[:-1]:
            continued.append(len(text.encode()) + record.index("\n") + 1)
        text += record
    path.write_text(text)
    return path, continued


def _schema(root: Path, **split) -> SchemaConfig:
    (root / "users.csv").write_text("user,age\n" + "".join(f"u{i},{18 + 3 * i}\n" for i in range(22)))
    return SchemaConfig(
        root=str(root), files=["a.csv", "b.csv"],
        label=LabelConfig(column="rating", threshold=4),
        dense=[DenseConfig(column="index"), DenseConfig(column="age", normalize="standardize"),
               DenseConfig(column="ts", log1p=True, normalize="minmax")],
        sparse=[SparseConfig(name="user", columns=["user"]), SparseConfig(name="movie", columns=["movie"]),
                SparseConfig(name="genres", columns=["g1", "g2", "g3"])],
        joins=[JoinConfig(path="users.csv", key="user", join_column="user", max_unmatched_fraction=0.5)],
        split=SplitConfig(**split),
    )


def _fixture(root: Path) -> Tuple[SchemaConfig, List[Tuple[Path, List[int]]], str]:
    """Two files of ratings split by time (val: the latest training rows), test rows seen in training
    dropped; and the bad-row example of the one row with a field too many, deep in b.csv."""
    root.mkdir()
    a = _records(300, 0, seed=1)
    b = _records(300, 300, seed=2)
    b[101] = b[101].replace(",title ", ",x,title ", 1)
    files = [_write(root / "a.csv", a), _write(root / "b.csv", b)]
    schema = _schema(root, by="timestamp", timestamp_column="ts", test_ratio=0.3, val_ratio=0.2, val_by="order",
                     dedup_key=["user", "movie"])
    line = 2 + sum(record.count("\n") for record in b[:101])
    return schema, files, f"{root / 'b.csv'}:{line}: 10 fields, expected 9"


def _indices(out: Path, split: str) -> List[int]:
    source = ShardSource(str(out), split_by="preprocessed", shuffle_buffer=0)
    return sorted(source.rows(split, 0, source.num_rows(split)).dense[:, 0].astype(int).tolist())


def test_csv_shards_and_meta_are_byte_identical_for_1_2_and_3_workers_and_hold_the_uncut_rows(tmp_path):
    schema, files, bad_row = _fixture(tmp_path / "in")
    part_bytes = 2500
    # Some cut lands inside a record spanning two lines: the plan must move that part's start to the record's end.
    cut_lines = []
    for path, _ in files:
        data = path.read_bytes()
        cut_lines += [(path, data.index(b"\n", cut - 1) + 1) for cut in range(part_bytes, len(data), part_bytes)]
    continued = {(path, offset) for path, offsets in files for offset in offsets}
    assert any(cut in continued for cut in cut_lines)

    runs = {n: preprocess_csv(schema, str(tmp_path / f"w{n}"), on_bad_row="skip", workers=n, part_bytes=part_bytes,
                              **_SMALL) for n in (1, 2, 3)}
    one = _contents(tmp_path / "w1")
    assert _contents(tmp_path / "w2") == one and _contents(tmp_path / "w3") == one
    meta = runs[1]
    assert meta["last_run"]["parts"] == 10 and meta["settings"]["part_bytes"] == part_bytes

    # The same rows, splits, ties, bad lines and statistics as one process reading each file whole.
    whole = preprocess_csv(schema, str(tmp_path / "whole"), on_bad_row="skip", **_SMALL)
    assert whole["last_run"]["parts"] == 2 and "part_bytes" not in whole["settings"]
    for key in ("splits", "num_rows", "bad_rows", "timestamp_cutoff", "timestamp_ties", "test_rows_deduplicated",
                "joins"):
        assert meta[key] == whole[key], key
    assert meta["bad_rows"]["examples"] == [bad_row]
    assert meta["test_rows_deduplicated"] > 0 and meta["timestamp_ties"]["rows_at_cutoff"] > 1
    for split in SPLITS:
        assert _indices(tmp_path / "w1", split) == _indices(tmp_path / "whole", split)
    for key in ("shift", "scale"):
        assert np.allclose(meta["dense_transform"][key], whole["dense_transform"][key], rtol=1e-12)


def test_csv_random_split_draws_the_same_rows_however_the_files_are_cut(tmp_path):
    _fixture(tmp_path / "in")
    schema = _schema(tmp_path / "in", by="ratio", test_ratio=0.25, val_ratio=0.1, seed=5)
    cut = preprocess_csv(schema, str(tmp_path / "cut"), on_bad_row="skip", part_bytes=2000, **_SMALL)
    whole = preprocess_csv(schema, str(tmp_path / "whole"), on_bad_row="skip", **_SMALL)
    assert cut["splits"] == whole["splits"] and cut["last_run"]["parts"] > whole["last_run"]["parts"]
    for split in SPLITS:
        assert _indices(tmp_path / "cut", split) == _indices(tmp_path / "whole", split)


def test_a_run_interrupted_after_the_first_pass_keeps_its_scans(tmp_path, monkeypatch):
    schema, _, _ = _fixture(tmp_path / "in")
    settings = {"on_bad_row": "skip", "part_bytes": 2500, **_SMALL}
    out = tmp_path / "out"
    monkeypatch.setattr(tabular._CsvInput, "plan", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        preprocess_csv(schema, str(out), **settings)
    assert len(list(out.glob(f"{PARTS_DIR}/*/scan.npz"))) == 10
    monkeypatch.undo()
    monkeypatch.setattr(tabular._CsvInput, "scan", _interrupt)  # the scans are not read again
    preprocess_csv(schema, str(out), **settings)
    monkeypatch.undo()
    preprocess_csv(schema, str(tmp_path / "clean"), **settings)
    assert _contents(out) == _contents(tmp_path / "clean") and not (out / PARTS_DIR).exists()


_RUN = "import json, sys; from ctr.data.tabular import preprocess_csv; " \
       "preprocess_csv(json.loads(sys.argv[1]), sys.argv[2], shard_rows=200, chunk_rows=100, part_bytes=25_000, " \
       "workers=2, progress_bar=False)"


def test_a_killed_csv_worker_fails_the_run_which_resumes_per_part_with_other_worker_counts(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    _write(root / "a.csv", _records(4000, 0, seed=3))
    _write(root / "b.csv", _records(1000, 4000, seed=4))
    schema = asdict(_schema(root, by="timestamp", timestamp_column="ts", test_ratio=0.2))
    out = tmp_path / "out"
    # The first pass is over once a part is done; the parts being written are killed mid-way.
    kill_a_worker_midway([sys.executable, "-c", _RUN, json.dumps(schema), str(out)], out, f"{PARTS_DIR}/*/done.json")

    settings = {"shard_rows": 200, "chunk_rows": 100, "part_bytes": 25_000, "progress_bar": False}
    resumed = preprocess_csv(schema, str(out), workers=3, **settings)
    clean = preprocess_csv(schema, str(tmp_path / "clean"), **settings)
    assert 0 < resumed["last_run"]["rows"] < 5000
    assert _contents(out) == _contents(tmp_path / "clean")
    assert clean["num_rows"] == 5000 and not (out / PARTS_DIR).exists()


MOVIELENS = SHARED_DATA / "movielens-100k"


@pytest.mark.skipif(not MOVIELENS.is_dir(), reason=f"{MOVIELENS} is not present (set CTR_DATA_ROOT)")
def test_movielens100k_temporal_by_two_torchrun_ranks_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_DATA_ROOT", str(SHARED_DATA))  # both runs name the input alike (meta.json "input")
    data = _data_config("movielens100k_temporal", f"data.path={tmp_path / 'one'}")
    part_bytes = 700_000  # u.data (1.9 MB) in 3 parts
    preprocess_csv(data.schema, data.path, part_bytes=part_bytes, progress_bar=False)
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "launch/preprocess.py", "data=movielens100k_temporal",
         f"data.path={tmp_path / 'ranks'}", f"part_bytes={part_bytes}", "progress_bar=false",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _contents(tmp_path / "ranks") == _contents(tmp_path / "one")
    meta = json.loads((tmp_path / "one" / "meta.json").read_text())
    assert meta["last_run"]["parts"] == 3
    assert {s: c["rows"] for s, c in meta["splits"].items()} == {"train": 72_000, "val": 8_000, "test": 20_000}

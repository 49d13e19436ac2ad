"""`embedding.init`: tables start from another run's checkpoint (resharded to a different plan on
2 ranks) or from a vectors file placed through the table's hashing; bad inputs stop at start-up
naming the file and the table."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ctr.build import build_task
from ctr.features.hashing import ModuloHashing
from ctr.features.vector_files import VectorsFileError, place, read_vectors
from ctr.parallel.state import full_state_dict
from ctr.train.checkpoint import BEST
from ctr.train.run import run
from ctr.train.safe_dcp import load_state
from ctr.train.table_init import init_settings, initialise_tables
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks, trainable_rank

WEIGHT = "model.embeddings.collection.embedding_bags.{}.weight"
ROWS, DIM = 200, 8  # TINY's tables


def _job(cfg_dict: dict, run_dir: str) -> None:
    run(OmegaConf.create(cfg_dict), Path(run_dir))


def _initialise(cfg_dict: dict, out_path: str) -> None:
    """Builds the sharded model, initialises its tables; rank 0 saves the full tables before and after."""
    with trainable_rank(cfg_dict) as (cfg, env, built):
        before = full_state_dict(built.model, env.device)
        rows = initialise_tables(cfg, built, env)
        after = full_state_dict(built.model, env.device)
        if env.is_main:
            torch.save({"before": before, "after": after, "rows": rows, "plan": built.rows}, out_path)


def _target(tmp_path: Path, world_size: int, *overrides: str) -> dict:
    cfg = compose(*TINY, *overrides)
    run_ranks(_initialise, world_size, OmegaConf.to_container(cfg, resolve=True), str(tmp_path / "target.pt"))
    return torch.load(tmp_path / "target.pt")


def _types(out: dict) -> dict:
    return {row["table"]: row["sharding_type"] for row in out["plan"]}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A trained 2-rank table-wise run (a Factorization Machine), with its checkpoints."""
    run_dir = tmp_path_factory.mktemp("source")
    cfg = compose(*(o for o in TINY if not o.startswith("model.")), "model=fm", "sharding=table_wise",
                  "trainer.tensorboard=false")
    run_ranks(_job, 2, OmegaConf.to_container(cfg, resolve=True), str(run_dir))
    return run_dir


def _checkpoint_tables(run_dir: Path) -> dict:
    cfg = compose(*(o for o in TINY if not o.startswith("model.")), "model=fm")
    task = build_task(cfg, instantiate(cfg.data), torch.device("cpu"))
    state = {"model": task.state_dict()}
    load_state(state, run_dir / "checkpoints" / BEST)
    return state["model"]


def test_tables_start_from_another_runs_checkpoint_resharded_on_two_ranks(tmp_path, source_run):
    out = _target(
        tmp_path, 2, "sharding=column_wise", "sharding.min_partition=4",
        "+sharding.tables.t_cat_3.sharding_type=data_parallel",
        f"+embedding.init.cat_0={{checkpoint: {source_run}}}",
        f"+embedding.init.cat_3={{checkpoint: {source_run / 'checkpoints' / BEST}}}",
        f"+embedding.init.cat_2={{checkpoint: {source_run}, table: cat_1}}",
    )
    assert _types(out)["t_cat_0"] == "column_wise" and _types(out)["t_cat_3"] == "data_parallel"
    source = _checkpoint_tables(source_run)
    for table, source_table in (("t_cat_0", "t_cat_0"), ("t_cat_3", "t_cat_3"), ("t_cat_2", "t_cat_1")):
        assert torch.equal(out["after"][WEIGHT.format(table)], source[WEIGHT.format(source_table)]), table
        assert not torch.equal(out["before"][WEIGHT.format(table)], out["after"][WEIGHT.format(table)])
    assert torch.equal(out["before"][WEIGHT.format("t_cat_1")], out["after"][WEIGHT.format("t_cat_1")])
    assert out["rows"] == {"cat_0": ROWS, "cat_3": ROWS, "cat_2": ROWS}


def _write_directory(path: Path, keys: np.ndarray, vectors: np.ndarray, kind: str = "raw") -> Path:
    path.mkdir()
    np.save(path / "vectors.npy", vectors.astype(np.float32))
    np.save(path / "keys.npy", keys.astype(np.int64))
    meta = {"table": "movie", "dim": vectors.shape[1], "rows": len(vectors), "keys": kind, "hashing": "modulo",
            "source_run": "elsewhere"}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def _write_word2vec(path: Path, keys: np.ndarray, vectors: np.ndarray) -> Path:
    lines = [f"{len(keys)} {vectors.shape[1]}"] + [f"{k} " + " ".join(repr(float(v)) for v in row) for k, row in zip(keys, vectors)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _expected_rows(keys: np.ndarray, vectors: np.ndarray) -> dict:
    """Row → the mean of the vectors whose raw key lands on it (id mod ROWS)."""
    grouped = {}
    for key, vector in zip(keys, vectors.astype(np.float64)):
        grouped.setdefault(int(key) % ROWS, []).append(vector)
    return {row: torch.tensor(np.mean(vs, axis=0), dtype=torch.float32) for row, vs in grouped.items()}


def test_tables_start_from_vectors_files_through_their_hashing_on_two_ranks(tmp_path):
    g = np.random.default_rng(0)
    # Raw 64-bit-range ids; 5 and 5 + ROWS land on one row (it takes their mean).
    keys = np.concatenate([g.integers(0, 2**62, 30), [5, 5 + ROWS]])
    vectors = g.normal(size=(len(keys), DIM))
    directory = _write_directory(tmp_path / "vectors", keys, vectors)
    text = _write_word2vec(tmp_path / "vectors.txt", keys, vectors)
    by_row = _write_directory(tmp_path / "rows", np.array([0, 7, 199]), vectors[:3], kind="row")
    out = _target(
        tmp_path, 2, "sharding=column_wise", "sharding.min_partition=4",
        "+sharding.tables.t_cat_1.sharding_type=data_parallel",
        f"+embedding.init.cat_0={{vectors: {directory}}}", f"+embedding.init.cat_1={{vectors: {text}}}",
        f"+embedding.init.cat_2={{vectors: {by_row}}}",
    )
    assert _types(out)["t_cat_0"] == "column_wise" and _types(out)["t_cat_1"] == "data_parallel"
    expected = _expected_rows(keys, vectors)
    for table in ("cat_0", "cat_1"):
        before, after = out["before"][WEIGHT.format(f"t_{table}")], out["after"][WEIGHT.format(f"t_{table}")]
        for row in range(ROWS):
            torch.testing.assert_close(after[row], expected.get(row, before[row]), rtol=0, atol=1e-6)
        assert out["rows"][table] == len(expected)
    after = out["after"][WEIGHT.format("t_cat_2")]
    torch.testing.assert_close(after[[0, 7, 199]], torch.tensor(vectors[:3], dtype=torch.float32))
    assert out["rows"]["cat_2"] == 3


def test_a_shape_mismatch_with_the_checkpoint_stops_naming_both_tables(tmp_path, source_run):
    with pytest.raises(Exception, match=r"table 'cat_0' of checkpoint .* is 200 × 8, table cat_0 is 200 × 16"):
        _target(tmp_path, 1, "embedding.dim=16", f"+embedding.init.cat_0={{checkpoint: {source_run}}}")


def test_a_table_the_checkpoint_lacks_stops_naming_it(tmp_path, source_run):
    with pytest.raises(Exception, match=r"embedding.init.cat_0: checkpoint .* has no table 'movie'"):
        _target(tmp_path, 1, f"+embedding.init.cat_0={{checkpoint: {source_run}, table: movie}}")


@pytest.mark.parametrize("init,message", [
    ({"t_a": {"vectors": "x"}}, r"embedding.init names \['t_a'\], which are not tables of the model; its tables: \['a', 'b'\]"),
    ({"a": {"vectors": "x", "checkpoint": "y"}}, "embedding.init.a: set exactly one of checkpoint and vectors"),
    ({"a": {"vectors": "x", "table": "b"}}, "embedding.init.a.table names a checkpoint's table"),
    ({"a": {"vector": "x"}}, r"embedding.init.a=.*expected \{checkpoint"),
])
def test_bad_init_settings_are_refused_naming_the_key(init, message):
    with pytest.raises((KeyError, ValueError), match=message):
        init_settings(init, ["t_a", "t_b"])


def _files(tmp_path: Path):
    g = np.random.default_rng(1)
    return np.arange(4), g.normal(size=(4, DIM))


@pytest.mark.parametrize("write,message", [
    (lambda p: p.write_text("4\n"), r"vectors.txt:1 \(embedding.init.t_a\): expected the word2vec header"),
    (lambda p: p.write_text("1 2\nmovie 0.5 0.5\n"), r"vectors.txt:2 \(embedding.init.t_a\): key 'movie' is not an integer"),
    (lambda p: p.write_text("1 2\n7 0.5\n"), r"vectors.txt:2 \(embedding.init.t_a\): 1 values, expected a key and 2"),
    (lambda p: p.write_text("1 2\n7 0.5 x\n"), r"vectors.txt:2 \(embedding.init.t_a\): could not convert"),
    (lambda p: p.write_text("2 2\n7 0.5 1\n"), r"the header says 2 vectors, the file has 1"),
    (lambda p: p.write_text("2 2\n7 0.5 1\n7 1 1\n"), r"key 7 appears more than once"),
    (lambda p: p.write_text("1 2\n7 nan 1\n"), r"non-finite"),
])
def test_malformed_word2vec_files_are_refused_naming_the_file_line_and_table(tmp_path, write, message):
    path = tmp_path / "vectors.txt"
    write(path)
    with pytest.raises(VectorsFileError, match=message):
        read_vectors(path, "t_a")


def test_malformed_vectors_directories_are_refused_naming_the_file_and_table(tmp_path):
    keys, vectors = _files(tmp_path)
    directory = _write_directory(tmp_path / "v", keys, vectors)
    (directory / "meta.json").write_text(json.dumps({"keys": "raw", "rows": 5, "dim": DIM}))
    with pytest.raises(VectorsFileError, match=r"v \(embedding.init.t_a\): meta.json says rows=5, dim=8, but vectors.npy is 4 × 8"):
        read_vectors(directory, "t_a")
    (directory / "meta.json").write_text(json.dumps({"keys": "hashed", "rows": 4, "dim": DIM}))
    with pytest.raises(VectorsFileError, match=r"meta.json \(embedding.init.t_a\): keys='hashed'"):
        read_vectors(directory, "t_a")
    (directory / "keys.npy").unlink()
    with pytest.raises(VectorsFileError, match=r"a vectors directory needs \['keys.npy'\]"):
        read_vectors(directory, "t_a")
    with pytest.raises(VectorsFileError, match="no such file or directory"):
        read_vectors(tmp_path / "missing", "t_a")


def test_vectors_of_another_width_or_rows_outside_the_table_are_refused(tmp_path):
    keys, vectors = _files(tmp_path)
    hashing = ModuloHashing({"a": ROWS})
    wide = read_vectors(_write_directory(tmp_path / "w", keys, vectors), "t_a")
    with pytest.raises(VectorsFileError, match=r"w \(embedding.init.t_a\): vectors are 8 wide, table t_a is 16 wide"):
        place(wide, "t_a", "a", ROWS, 16, hashing)
    outside = read_vectors(_write_directory(tmp_path / "r", keys + ROWS - 2, vectors, kind="row"), "t_a")
    with pytest.raises(VectorsFileError, match="row key 200 is outside table t_a's 200 rows"):
        place(outside, "t_a", "a", ROWS, DIM, hashing)

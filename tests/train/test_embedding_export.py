"""Vectors exported from 2-rank runs, gathered from every kind of shard, equal the tables the
checkpoint holds (read whole in one process, an independent path through DCP)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.data.tabular import hash_ids
from ctr.features.vector_files import read_vectors, write_vectors
from ctr.train.embedding_export import table_weights
from ctr.train.export import load_trained
from tests.data.behaviour_log import behaviour_overrides, write_log
from tests.hydra_config import ON_CPU, TINY

REPO = Path(__file__).resolve().parents[2]
# sharding=mixed: t_cat_0 data-parallel, t_cat_1 column-wise over ranks [1, 0],
# t_cat_2 table-column-wise, t_cat_3 table-wise on rank 1.
MIXED_TABLES = ["cat_0", "cat_1", "cat_2", "cat_3"]


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _table(trained, name: str) -> np.ndarray:
    state = trained.task.state_dict()
    return state[table_weights(list(state), [name])[name]].numpy()


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("mixed") / "run"
    _run("launch/train.py", *TINY, "embedding.dim=16", "sharding=mixed", "distributed.nproc_per_node=2",
         f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.fixture(scope="module")
def item2vec_overrides(tmp_path_factory) -> list:
    """A small Item2Vec run on a behaviour log, 2 ranks."""
    log_dir = write_log(tmp_path_factory.mktemp("log"))
    return [*ON_CPU, *behaviour_overrides(log_dir), "model=item2vec", "embedding.hashing=vocab",
            "embedding.hashing.min_count=1", "embedding.dim=8", "trainer.batch_size=64", "trainer.epochs=1",
            "trainer.progress_bar=false", "distributed.nproc_per_node=2"]


@pytest.fixture(scope="module")
def item2vec_run(tmp_path_factory, item2vec_overrides) -> Path:
    run_dir = tmp_path_factory.mktemp("item2vec") / "run"
    _run("launch/train.py", *item2vec_overrides, f"hydra.run.dir={run_dir}")
    return run_dir


def test_rows_gathered_from_every_sharding_type_on_two_ranks_equal_the_checkpoints_tables(mixed_run, tmp_path):
    _run("launch/export_embeddings.py", f"run_dir={mixed_run}", f"tables=[{','.join(MIXED_TABLES)}]",
         "nproc_per_node=2", "backend=gloo", f"output={tmp_path}")
    trained = load_trained(mixed_run)
    for name in MIXED_TABLES:
        exported = read_vectors(tmp_path / name)
        table = _table(trained, name)
        assert np.array_equal(exported.vectors, table), name
        assert np.array_equal(exported.keys, np.arange(len(table)))
        assert exported.meta == {"table": name, "dim": 16, "rows": len(table), "keys": "row", "hashing": "modulo",
                                 "source_run": str(mixed_run.resolve())}


def test_item2vec_vectors_are_keyed_by_the_raw_ids_vocab_hashing_kept(item2vec_run, tmp_path):
    _run("launch/export_embeddings.py", f"run_dir={item2vec_run}", "tables=[item_id]", "nproc_per_node=2",
         "backend=gloo", f"output={tmp_path}")
    exported = read_vectors(tmp_path / "item_id")
    trained = load_trained(item2vec_run)
    vocab = trained.hashing.row_ids("item_id").numpy()
    assert exported.meta["keys"] == "raw" and exported.meta["hashing"] == "vocab"
    assert np.array_equal(exported.keys, vocab[1:])  # the out-of-vocabulary row 0 is left out
    assert np.array_equal(exported.vectors, _table(trained, "item_id")[1:])
    item_ids = dict(zip(hash_ids("item_id", [str(i) for i in range(1, 25)]).tolist(), range(1, 25)))
    assert set(exported.keys.tolist()) <= set(item_ids)
    movie = item_ids[int(exported.keys[0])]
    found = _run("launch/similar.py", f"vectors={tmp_path / 'item_id'}", f"key={movie}", "k=3").stdout
    assert found.splitlines()[0] == str(movie) and len(found.strip().splitlines()) == 4


def test_unknown_tables_and_foreign_directories_are_refused(item2vec_run, tmp_path):
    with pytest.raises(KeyError, match=r"tables names \['movie'\].*\['item_id', 'item_id_context'\]"):
        table_weights(list(load_trained(item2vec_run).task.state_dict()), ["movie"])
    (tmp_path / "mine.txt").write_text("not an export's")
    with pytest.raises(ValueError, match="holds files other than"):
        write_vectors(tmp_path, np.zeros((2, 4), np.float32), np.arange(2), "t", "row", "modulo", "run")
    assert (tmp_path / "mine.txt").exists()


def test_exported_vectors_start_a_fresh_run_by_the_same_table_name(item2vec_run, item2vec_overrides, tmp_path):
    """Export → `embedding.init.<table>.vectors` in a fresh run, the table frozen → its rows are the exported ones."""
    _run("launch/export_embeddings.py", f"run_dir={item2vec_run}", "tables=[item_id]", f"output={tmp_path}")
    exported = read_vectors(tmp_path / "item_id")
    fresh = tmp_path / "fresh"
    _run("launch/train.py", *item2vec_overrides, "distributed.seed=7", "distributed.nproc_per_node=1",
         f"+embedding.init.item_id={{vectors: {tmp_path / 'item_id'}}}", "+embedding.update.item_id=frozen",
         f"hydra.run.dir={fresh}")
    trained = load_trained(fresh)
    rows = trained.hashing.rows_of("item_id", torch.from_numpy(exported.keys)).numpy()
    assert np.array_equal(_table(trained, "item_id")[rows], exported.vectors)
    assert json.loads((fresh / "metrics.json").read_text())["initialised_rows"] == {"item_id": len(exported.keys)}

"""Training to convergence: the default trainer validates every epoch, stops early, and takes
the test metrics from the best checkpoint's weights, restored after training (2 ranks, DCP).

The data set is built so that the best weights are not the last: its validation rows carry
the opposite labels to its train and test rows, so every epoch of learning makes validation
worse. The first validation is the best, training stops `patience` validations later, and
the test metrics must be those of the first epoch's weights, not the last ones'.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.parallel.process_group import DistributedEnv
from ctr.train.evaluate import evaluate
from ctr.train.export import load_trained
from tests.conftest import REPO
from tests.hydra_config import ON_CPU, TINY, TINY_MODEL

STEPS_PER_EPOCH = 10  # 640 train rows, batch 32 per rank, 2 ranks
SCHEMA = [
    "data=movielens100k",
    "data.schema.files=[train.csv]",
    "data.schema.val_files=[val.csv]",
    "data.schema.test_files=[test.csv]",
    "data.schema.delimiter=','",
    "data.schema.header=true",
    "data.schema.columns=[]",
    "data.schema.joins=[]",
    "data.schema.label={column: click, threshold: null}",
    "data.schema.dense=[{column: x}]",
    "data.schema.sparse=[{name: user, columns: [user]}, {name: item, columns: [item]}]",
    "data.schema.split={by: files, val_ratio: 0}",
]
# The defaults (epochs null: to convergence), with TINY's model: TINY_MODEL pins one epoch.
CONVERGING = [o for o in TINY_MODEL if not o.startswith(("trainer.epochs", "trainer.early_stopping_patience"))]


def _write(path: Path, rows: int, seed: int, flip: bool) -> None:
    """Clicks on items 0-9, none on items 10-19 (`flip`: the other way round)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 20, rows)
    users = rng.integers(0, 10, rows)
    clicks = (items < 10) != flip
    lines = ["user,item,x,click", *(f"u{u},i{i},{rng.normal():.3f},{int(c)}" for u, i, c in zip(users, items, clicks))]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def flipped_val(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("flipped")
    _write(root / "train.csv", 640, seed=1, flip=False)
    _write(root / "val.csv", 128, seed=2, flip=True)
    _write(root / "test.csv", 256, seed=3, flip=False)
    data = [*SCHEMA, f"data.schema.root={root}", f"data.path={root / 'shards'}"]
    pre = subprocess.run([sys.executable, "launch/preprocess.py", *data, "progress_bar=false",
                          f"hydra.run.dir={root / 'pre'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    return data


def _train(run_dir: Path, *overrides: str) -> str:
    proc = subprocess.run([sys.executable, "launch/train.py", *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


def _evaluate(run_dir: Path, checkpoint: Path) -> dict:
    trained = load_trained(run_dir, str(checkpoint))
    env = DistributedEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"),
                         backend="none")
    return evaluate(trained.task, trained.source, "test", trained.hashing, env, 64)


def test_early_stopping_restores_the_best_checkpoints_weights_for_the_test_metrics(tmp_path, flipped_val):
    run_dir = tmp_path / "run"
    output = _train(run_dir, *flipped_val, *CONVERGING, *ON_CPU, "distributed.nproc_per_node=2",
                    "trainer.max_epochs=6", "checkpoint.keep_last=1")
    assert "training to convergence: up to 6 epoch(s) (the data config recommends 10), validating every 10 steps, " \
        "stopping after 2" in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # validations at 10 (best), 20, 30: two without improvement, then the stop
    assert metrics["stopped_early"] and metrics["train_steps"] == 3 * STEPS_PER_EPOCH
    assert metrics["test_weights"] == "best" and metrics["test_weights_step"] == STEPS_PER_EPOCH
    assert "test metrics from the best checkpoint's weights: step 10 of 30" in output
    best = _evaluate(run_dir, run_dir / "checkpoints" / "best")
    last = _evaluate(run_dir, run_dir / "checkpoints" / "step_000000030")
    assert metrics["test_log_loss"] == pytest.approx(best["log_loss"], rel=1e-5)
    # The last weights learnt more of the train rows' rule, which the test rows share.
    assert last["log_loss"] < best["log_loss"] - 1e-3


def test_a_resumed_run_keeps_its_patience_count_and_tests_the_earlier_attempts_best(tmp_path, flipped_val):
    run_dir = tmp_path / "run"
    common = [*flipped_val, *CONVERGING, *ON_CPU, "distributed.nproc_per_node=1", "trainer.batch_size=64",
              "trainer.max_epochs=6", "checkpoint.every_steps=10"]
    _train(run_dir, *common, "trainer.max_steps=20")  # validations at 10 (best) and 20 (1 without improvement)
    output = _train(run_dir, *common)
    assert "resumed from" in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the second validation without improvement, at 30, is the patience's 2nd: the stop
    assert metrics["resumed_from_step"] == 20 and metrics["stopped_early"] and metrics["train_steps"] == 30
    assert metrics["test_weights"] == "best" and metrics["test_weights_step"] == 10
    best = _evaluate(run_dir, run_dir / "checkpoints" / "best")
    assert metrics["test_log_loss"] == pytest.approx(best["log_loss"], rel=1e-5)
    # the same command again: the run had stopped early, so it trains no further
    output = _train(run_dir, *common)
    assert "the run resumed had stopped early: no further training" in output
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["resumed_from_step"] == 30 and again["train_steps"] == 30 and again["stopped_early"]
    assert again["test_log_loss"] == pytest.approx(best["log_loss"], rel=1e-5)


def test_data_without_a_validation_split_trains_one_epoch_as_before(tmp_path):
    run_dir = tmp_path / "run"
    no_val = [o for o in TINY if not o.startswith(("trainer.epochs", "trainer.early_stopping_patience"))]
    output = _train(run_dir, *no_val, "data.val_rows=0", "distributed.nproc_per_node=1")
    assert "the data has no validation split: 1 epoch(s), no validation, no early stopping" in output
    assert "validation AUC" not in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 20 and metrics["epochs_planned"] == 1 and not metrics["stopped_early"]
    assert metrics["test_weights"] == "last" and metrics["test_weights_step"] == 20

"""A new user's defaults: the data's recommended batch size, validation per epoch, checkpoints
kept as `keep_last` / `keep_best` say on every save path, and the run directory's size reported."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ctr.train.run import _eval_every_steps, planned_epochs
from tests.hydra_config import TINY, compose

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("overrides, expected", [
    ((), 2048),
    (("data=movielens100k",), 256),
    (("data=criteo_kaggle10k",), 256),
    (("data=movielens100k", "trainer.batch_size=64"), 64),
    (("data.batch_size=512",), 512),
])
def test_the_trainer_takes_the_data_configs_batch_size_unless_given_one(overrides, expected):
    assert compose(*overrides).trainer.batch_size == expected


@pytest.mark.parametrize("overrides, expected", [
    ((), 2),  # synthetic: fresh rows are cheaper than more passes
    (("data=movielens100k",), 10),
    (("data=criteo_kaggle10k",), 10),
    (("trainer.max_epochs=4",), 4),
])
def test_the_trainer_converges_within_the_data_configs_max_epochs_unless_given_one(overrides, expected):
    cfg = compose(*overrides)
    assert cfg.trainer.epochs is None and cfg.trainer.max_epochs == expected
    assert cfg.trainer.early_stopping_patience == 2


def test_training_to_convergence_caps_the_epochs_and_validates_each_only_where_there_is_validation():
    trainer = OmegaConf.create({"epochs": None, "max_epochs": 7, "eval_every": None, "eval_every_steps": None})
    assert planned_epochs(trainer, has_validation=True) == 7 and planned_epochs(trainer, has_validation=False) == 1
    assert _eval_every_steps(trainer, 20, converging=True) == 20 and _eval_every_steps(trainer, 20) is None
    assert _eval_every_steps(OmegaConf.merge(trainer, {"eval_every_steps": 5}), 20, converging=True) == 5
    assert planned_epochs(OmegaConf.merge(trainer, {"epochs": 3}), has_validation=False) == 3


def test_eval_every_epoch_is_an_epoch_of_steps_and_excludes_eval_every_steps():
    assert _eval_every_steps(OmegaConf.create({"eval_every": "epoch", "eval_every_steps": None}), 20) == 20
    assert _eval_every_steps(OmegaConf.create({"eval_every": None, "eval_every_steps": 7}), 20) == 7
    with pytest.raises(ValueError, match="trainer.eval_every=epoch and trainer.eval_every_steps=7: set one"):
        _eval_every_steps(OmegaConf.create({"eval_every": "epoch", "eval_every_steps": 7}), 20)


def test_validation_per_epoch_checkpoints_kept_as_configured_and_the_run_size_reported(tmp_path):
    run_dir = tmp_path / "run"
    stale = run_dir / "checkpoints" / "step_000000003.partial"  # left by a crashed save
    stale.mkdir(parents=True)
    (stale / "shard").write_bytes(b"x" * 1000)
    proc = subprocess.run(
        [sys.executable, "launch/train.py", *TINY, "distributed.nproc_per_node=1", "trainer.epochs=3",
         "trainer.eval_every=epoch", "checkpoint.every_steps=7", "checkpoint.keep_last=1", "checkpoint.resume=none",
         f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    # 640 rows at batch 32: 20 steps an epoch, validated after each (steps 20, 40, 60), once each.
    assert [line.split("step ")[1].split()[0] for line in output.splitlines() if "validation AUC" in line] == \
        ["20", "40", "60"]
    assert "an epoch is only 20 steps (640 train rows, batch 32 per rank × 1 ranks; the data config recommends 2048)" in output
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best", "step_000000060"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    files = sum(f.stat().st_size for f in (run_dir / "checkpoints").rglob("*") if f.is_file())
    assert metrics["checkpoint_bytes"] == files and metrics["run_dir_bytes"] > files
    assert f"run directory {run_dir}: " in output

"""End to end through the real entry point, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hydra_config import TINY

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def _check_run_dir(run_dir: Path, world_size: int) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == world_size
    assert 0.0 < metrics["test_auc"] < 1.0 and metrics["test_log_loss"] > 0.0
    assert 0.5 < metrics["test_teacher_auc"] < 1.0
    assert metrics["train_steps"] == 640 // (32 * world_size)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert {row["table"] for row in plan["tables"]} == {f"t_cat_{i}" for i in range(6)}
    assert {row["sharding_type"] for row in plan["tables"]} == {"table_wise"}
    resolved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert resolved["trainer"]["batch_size"] == 32
    return metrics


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([TORCHRUN, "--standalone", "--nproc_per_node=2"], id="torchrun"),
        pytest.param([sys.executable], id="self-launched"),
    ],
)
def test_train_two_ranks_end_to_end(tmp_path, launcher):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [*launcher, "launch/train.py", *TINY, "distributed.nproc_per_node=2", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_run_dir(run_dir, world_size=2)
    assert "test AUC" in proc.stdout + proc.stderr


def test_a_bad_option_fails_at_start_up_naming_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch/train.py", *TINY, "optimizer.sparse=adam", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "optimizer.sparse='adam' has no FBGEMM CPU kernel" in proc.stdout + proc.stderr

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


def _train(run_dir: Path, *options: str) -> subprocess.CompletedProcess:
    """launch/train.py self-launched with TINY and `options`, run from the repo root."""
    return subprocess.run(
        [sys.executable, "launch/train.py", *TINY, *options, f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def test_an_optimizer_without_a_cpu_kernel_fails_at_start_up_naming_it(tmp_path):
    proc = _train(tmp_path, "optimizer.sparse=adam")
    assert proc.returncode != 0
    assert "optimizer.sparse='adam' has no FBGEMM CPU kernel" in proc.stdout + proc.stderr
    assert "train loss" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "options",
    [
        # the spelling, embedding.hashing=qr, as launch/train.py takes it from the command line
        pytest.param(["embedding.hashing=qr", "embedding.hashing.combine=product", "embedding.precision=fp16",
                      "comms=fp16"], id="qr-fp16-storage-fp16-comms"),
        pytest.param(["embedding/hashing=vocab", "embedding.dim_rule.k=3", "comms=int8", "sharding=column_wise",
                      "optimizer.sparse=adagrad"], id="vocab-dim-rule-int8-comms-column-wise-adagrad"),
    ],
)
def test_embedding_options_train_on_two_ranks_and_record_their_bytes(tmp_path, options):
    run_dir = tmp_path / "run"
    proc = _train(run_dir, *options)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 10 and 0.0 < metrics["test_auc"] < 1.0
    plan = json.loads((run_dir / "plan.json").read_text())
    assert sum(metrics["embedding_bytes_per_rank"].values()) == metrics["embedding_bytes"] > 0
    assert metrics["comms_bytes_per_step"]["forward"] > 0
    # fp32 optimizer state, whatever the weights' precision: Adagrad one per weight, row-wise
    # Adagrad one per row of each column shard (a table-wise table is one shard)
    adagrad = "optimizer.sparse=adagrad" in options
    assert metrics["optimizer_state_bytes"] == sum(
        r["shape"][0] * (r["shape"][1] if adagrad else len(r["ranks"])) * 4 for r in plan["tables"]
    ) == sum(metrics["optimizer_state_bytes_per_rank"].values())
    if "embedding.hashing=qr" in options:  # two fp16 tables of ~sqrt(200) rows per feature
        assert {row["table"] for row in plan["tables"]} == {f"t_cat_{i}@{p}" for i in range(6) for p in "qr"}
        assert metrics["embedding_bytes"] == sum(r["shape"][0] * r["shape"][1] * 2 for r in plan["tables"])


def test_comms_the_device_cannot_run_fail_at_start_up_naming_the_key(tmp_path):
    proc = _train(tmp_path, "comms=bf16")
    assert proc.returncode != 0
    assert "comms.forward_precision='bf16' cannot run on CPU/gloo" in proc.stdout + proc.stderr
    assert "train loss" not in proc.stdout + proc.stderr


def test_wide_deep_with_a_cross_trains_on_one_rank_and_evaluates_through_the_entry_points(tmp_path):
    """The crosses are part of the data path: evaluate and export must rebuild them to reproduce the run's AUC."""
    run_dir = tmp_path / "run"
    model = ["model=wide_deep", "model.hidden_dims=[16,8]", "model.wide.crosses=[{features: [cat_0, cat_1], num_embeddings: 50}]",
             "optimizer.wide.name=adagrad"]
    options = [*(o for o in TINY if not o.startswith("model.")), *model, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=1", "launch/train.py", *options],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["world_size"] == 1 and trained["train_steps"] == 640 // 32
    assert trained["parameters"]["wide"] == 4 * (6 * 200 + 50)
    _entry_point("launch/evaluate.py", f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'eval'}")
    _entry_point("launch/export.py", f"run_dir={run_dir}", "precision=int8", f"output={tmp_path / 'int8'}")
    _entry_point("launch/evaluate.py", f"exported={tmp_path / 'int8'}", f"hydra.run.dir={tmp_path / 'eval_int8'}")
    evaluated = json.loads((tmp_path / "eval" / "eval_test.json").read_text())
    assert evaluated["auc"] == pytest.approx(trained["test_auc"], abs=1e-6)
    int8 = json.loads((tmp_path / "eval_int8" / "eval_test.json").read_text())
    assert int8["auc"] == pytest.approx(evaluated["auc"], abs=0.01)


def _entry_point(*args: str) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

"""Checkpoints: exact resume, resharding on load, atomic saves, recovery from a killed rank."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ctr.train import checkpoint as checkpoint_module
from tests.hydra_config import TINY

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# A schedule on both optimizers, so resuming must restore it too.
RUN = [
    *TINY,
    "optimizer.dense_schedule.warmup_steps=3",
    "optimizer.dense_schedule.decay=cosine",
    "optimizer.sparse_schedule.decay=linear",
    "trainer.eval_every_steps=4",
]


def _train(run_dir: Path, *overrides: str, launcher=(sys.executable,)) -> dict:
    proc = subprocess.run(
        [*launcher, "launch/train.py", *RUN, f"hydra.run.dir={run_dir}", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((run_dir / "metrics.json").read_text())


def _weights(checkpoint_dir: Path, tmp_path: Path) -> dict:
    """A DCP checkpoint's model tensors, whole, read offline."""
    out = tmp_path / f"{checkpoint_dir.parent.parent.name}-{checkpoint_dir.name}.pt"
    dcp_to_torch_save(str(checkpoint_dir), str(out))
    return torch.load(out, weights_only=False)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """10 steps on 2 ranks, checkpoint every 5: the run the others must reproduce."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    _train(run_dir, "checkpoint.every_steps=5")
    return run_dir


def test_resume_after_step_k_ends_bitwise_equal_to_an_uninterrupted_run(uninterrupted, tmp_path):
    run_dir = tmp_path / "interrupted"
    first = _train(run_dir, "checkpoint.every_steps=5", "trainer.max_steps=5")
    assert first["train_steps"] == 5
    resumed = _train(run_dir, "checkpoint.every_steps=5")
    assert resumed["resumed_from_step"] == 5 and resumed["train_steps"] == 10
    expected = json.loads((uninterrupted / "metrics.json").read_text())
    for key in ("test_auc", "test_log_loss", "test_calibration", "val_auc", "val_log_loss"):
        assert resumed[key] == expected[key], key
    ours = _weights(run_dir / "checkpoints" / "step_000000010", tmp_path)
    reference = _weights(uninterrupted / "checkpoints" / "step_000000010", tmp_path)
    assert ours.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(ours[key], tensor), key


def test_checkpoint_of_two_table_wise_ranks_loads_into_one_column_wise_rank(uninterrupted, tmp_path):
    """torch.distributed.checkpoint reshards on load: same weights, same predictions."""
    expected = json.loads((uninterrupted / "metrics.json").read_text())
    plan = json.loads((uninterrupted / "plan.json").read_text())
    assert {row["sharding_type"] for row in plan["tables"]} == {"table_wise"}
    resharded = _train(
        tmp_path / "resharded", "distributed.nproc_per_node=1", "sharding=column_wise", "sharding.min_partition=4",
        f"checkpoint.resume={uninterrupted / 'checkpoints' / 'step_000000010'}", "checkpoint.weights_only=true",
        "trainer.max_steps=0",
    )
    new_plan = json.loads((tmp_path / "resharded" / "plan.json").read_text())
    assert {row["sharding_type"] for row in new_plan["tables"]} == {"column_wise"}
    assert resharded["world_size"] == 1 and resharded["train_steps"] == 0
    for key in ("test_auc", "test_log_loss", "test_calibration"):
        assert resharded[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key


def test_best_checkpoint_is_kept_by_the_validation_metric(uninterrupted):
    best = json.loads((uninterrupted / "checkpoints" / "best" / "COMPLETE").read_text())
    metrics = json.loads((uninterrupted / "metrics.json").read_text())
    assert best["metric"] == "auc" and best["value"] == metrics["best_val_auc"]
    kept = sorted(p.name for p in (uninterrupted / "checkpoints").glob("step_*"))
    assert kept == ["step_000000005", "step_000000010"]
    assert (uninterrupted / "tensorboard").is_dir() and any((uninterrupted / "tensorboard").iterdir())


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    from hydra.utils import instantiate

    from ctr.build import build_task, optimizers, shard
    from ctr.data.reader import batches
    from ctr.features.hashing import ModuloHashing
    from ctr.parallel.process_group import INIT_METHOD_ENV, init_distributed, shutdown
    from ctr.train.loop import train
    from ctr.train.schedule import build_scheduler
    from tests.hydra_config import compose

    cfg = compose(*TINY)
    monkeypatch.setenv("RANK", "0")
    for key in ("WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "1" if "SIZE" in key else "0")
    # A file rendezvous, not a fixed port another test run may hold.
    monkeypatch.setenv(INIT_METHOD_ENV, f"file://{tmp_path / 'rendezvous'}")
    env = init_distributed("gloo")
    try:
        source = instantiate(cfg.data)
        task = build_task(cfg, source, torch.device("meta"))
        model = shard(task, env, cfg).model
        optimizer = optimizers(model, cfg)
        scheduler = build_scheduler(optimizer, cfg.optimizer.sparse_schedule, cfg.optimizer.dense_schedule, 10)
        hashing = ModuloHashing({name: 200 for name in source.sparse_names})
        train(model, optimizer, (hashing(b) for b in batches(source, "train", 32, 0, 1, True)), env, 3, 10, False)
        checkpointer = checkpoint_module.Checkpointer(tmp_path, 2, env.device, checkpoint_module.training_config(cfg))
        saved = {k: _local(v).clone() for k, v in model.state_dict().items()}
        good = checkpointer.save(3, model, optimizer, scheduler)

        real_save = checkpoint_module.dcp.save

        def crash_after_writing(state, checkpoint_id):
            real_save(state, checkpoint_id=checkpoint_id)
            raise OSError("disk full (injected)")

        monkeypatch.setattr(checkpoint_module.dcp, "save", crash_after_writing)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(1.0)
        with pytest.raises(OSError, match="injected"):
            checkpointer.save(4, model, optimizer, scheduler)
        assert (tmp_path / "step_000000004.partial").is_dir()
        assert checkpoint_module.latest(tmp_path) == good
        assert checkpointer.load(good, model, optimizer, scheduler) == 3
        for key, value in saved.items():
            assert torch.equal(_local(model.state_dict()[key]), value), key
    finally:
        shutdown()


def _local(value) -> torch.Tensor:
    """This rank's values of a state-dict entry, sharded or not, flattened."""
    if isinstance(value, ShardedTensor):
        return torch.cat([shard.tensor.detach().reshape(-1) for shard in value.local_shards()])
    return value.detach().reshape(-1)


def _worker_pids(parent: int) -> list:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


# 100 steps, checkpoint every 20: the kill lands well before the end.
LONGER = ["data.train_rows=64000", "trainer.batch_size=320", "checkpoint.every_steps=20"]


def test_torchrun_restarts_a_killed_rank_and_the_job_finishes_as_if_uninterrupted(uninterrupted, tmp_path):
    run_dir = tmp_path / "recovered"
    command = [
        TORCHRUN, "--standalone", "--nproc_per_node=2", "--max-restarts=1", "launch/train.py", *RUN,
        f"hydra.run.dir={run_dir}", *LONGER,
    ]
    reference = _train(tmp_path / "reference", *LONGER)
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "step_000000020" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "no first checkpoint"
        time.sleep(0.05)
    victims = _worker_pids(proc.pid)
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 20, "the restarted job must resume from a checkpoint"
    assert metrics["train_steps"] == reference["train_steps"] == 100
    for key in ("test_auc", "test_log_loss", "val_auc"):
        assert metrics[key] == reference[key], key


def test_rerunning_a_run_directory_with_another_config_is_refused_naming_the_keys(uninterrupted, tmp_path):
    run_dir = tmp_path / "rerun"
    shutil.copytree(uninterrupted, run_dir)
    proc = subprocess.run(
        [sys.executable, "launch/train.py", *RUN, f"hydra.run.dir={run_dir}", "checkpoint.every_steps=5",
         "model.residual_hidden_dim=8", "trainer.progress_bar=true"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "written with a different config; keys that differ: ['model.residual_hidden_dim']" in proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads((uninterrupted / "metrics.json").read_text())

"""Every tensor that meets a collective is on the rank's device (NCCL takes CUDA tensors only).

A 2-rank gloo job goes through training (with log steps), validation, checkpoints, a resume,
the test evaluation, the gather of a sharded model's full state and the throughput
benchmark's collective, under `CollectiveDevices`, which records each tensor that reaches a
collective from host memory (see tests/collective_devices.py for how it tells on a CPU).
"""

import json
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ctr.data.reader import batches
from ctr.parallel.process_group import in_process_group
from ctr.parallel.state import full_state_dict
from ctr.train.run import _run, build_trainable
from tests.collective_devices import CollectiveDevices
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks


def _job(env, cfg_dict: dict, run_dir: str, out_dir: str) -> None:
    from benchmarks.throughput import embedding_bytes_per_step

    cfg = OmegaConf.create(cfg_dict)
    with CollectiveDevices(env.device) as recorder:
        _run(cfg, Path(run_dir), env, time.time())  # trains, validates, checkpoints, tests
        _run(cfg, Path(run_dir), env, time.time())  # resumes from the last checkpoint
        built = build_trainable(cfg, env)
        full_state_dict(built.model, env.device)
        rank_batches = [built.hashing(b) for b, _ in zip(
            batches(built.source, "train", cfg.trainer.batch_size, env.rank, env.world_size, True), range(2))]
        embedding_bytes_per_step(built, rank_batches, cfg, env)
    (Path(out_dir) / f"rank{env.rank}.json").write_text(json.dumps(recorder.violations))


@pytest.mark.parametrize("backend", [
    "gloo",
    pytest.param("nccl", marks=pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="NCCL runs one rank per GPU: this 2-rank case needs 2 GPUs")),
])
def test_collectives_get_tensors_on_the_rank_device(tmp_path, backend):
    # The binned AUC: its states are made by ctr (the exact AUC's are the model's predictions).
    cfg = compose(*TINY, "trainer.log_every_steps=3", "trainer.eval_every_steps=5", "checkpoint.every_steps=5",
                  "trainer.tensorboard=false", "trainer.auc=binned", f"distributed.backend={backend}")
    (tmp_path / "run").mkdir()
    run_ranks(in_process_group, 2, _job, backend, OmegaConf.to_container(cfg, resolve=True),
              str(tmp_path / "run"), str(tmp_path))
    violations = [v for rank in (0, 1) for v in json.loads((tmp_path / f"rank{rank}.json").read_text())]
    assert not violations, "\n".join(sorted(set(violations)))

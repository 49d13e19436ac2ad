"""Quantized communication of pooled embeddings: what runs on CPU, and what it costs in loss."""

from typing import List

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ctr.data.reader import batches
from ctr.parallel.comms import check_comms
from ctr.parallel.process_group import init_distributed, shutdown
from ctr.train.loop import train
from ctr.train.run import build_trainable
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks

STEPS = 20
# Largest gap allowed between a per-step loss and the fp32-comms run's, over 20 steps
# (measured on TINY: fp16 2.5e-6, int8 2.9e-4).
FP16_LOSS_TOLERANCE = 1e-4
INT8_LOSS_TOLERANCE = 2e-3


def _train(cfg_dict: dict, out_path: str) -> None:
    """One rank: 20 steps with the configured comms; rank 0 saves the global per-step losses."""
    cfg = OmegaConf.create(cfg_dict)
    env = init_distributed("gloo")
    try:
        torch.manual_seed(0)
        built = build_trainable(cfg, env)
        train_batches = (
            built.hashing(b)
            for b in batches(built.source, "train", cfg.trainer.batch_size, env.rank, env.world_size, True)
        )
        result = train(built.model, built.optimizer, train_batches, env, STEPS, log_every_steps=10**9,
                       progress_bar=False)
        per_rank: List[List[float]] = [None] * env.world_size  # type: ignore[list-item]
        dist.all_gather_object(per_rank, result.losses)
        if env.is_main:
            torch.save([sum(step) / len(step) for step in zip(*per_rank)], out_path)
    finally:
        shutdown()


def _losses(tmp_path, comms: str) -> List[float]:
    cfg = compose(*TINY, "data.train_rows=1280", f"comms={comms}")
    out = tmp_path / f"{comms}.pt"
    run_ranks(_train, 2, OmegaConf.to_container(cfg, resolve=True), str(out))
    return torch.load(out)


def test_fp16_comms_track_fp32_comms_over_20_steps_and_int8_stays_close(tmp_path):
    fp32, fp16, int8 = (_losses(tmp_path, c) for c in ("fp32", "fp16", "int8"))
    assert len(fp32) == len(fp16) == STEPS
    assert fp32[-1] < fp32[0]  # it learns
    assert max(abs(a - b) for a, b in zip(fp32, fp16)) < FP16_LOSS_TOLERANCE
    assert max(abs(a - b) for a, b in zip(fp32, int8)) < INT8_LOSS_TOLERANCE
    assert fp16 != fp32  # the codec really ran


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_precisions_gloo_cannot_run_fail_at_start_up_naming_the_key(precision):
    with pytest.raises(ValueError, match=f"comms.backward_precision='{precision}' cannot run on CPU/gloo"):
        check_comms({"forward_precision": "fp16", "backward_precision": precision}, "cpu")
    check_comms({"forward_precision": precision, "backward_precision": precision}, "cuda")
    with pytest.raises(ValueError, match="comms.forward_precision='fp4'"):
        check_comms({"forward_precision": "fp4", "backward_precision": "fp32"}, "cuda")

"""Quantized communication of pooled embeddings: what runs on CPU, and what it costs in loss."""

import logging
from typing import List

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torchrec.distributed.types import ParameterSharding, ShardingPlan

from ctr.data.reader import batches
from ctr.parallel.comms import check_comms, qcomm_codecs, substituted_precisions, warn_substituted_precisions, wire_bytes
from ctr.parallel.plan_summary import pooled_comms_bytes
from ctr.train.loop import train
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks, trainable_rank

STEPS = 20
# Largest gap allowed between a per-step loss and the fp32-comms run's, over 20 steps
# (measured on TINY: fp16 2.5e-6, int8 2.9e-4).
FP16_LOSS_TOLERANCE = 1e-4
INT8_LOSS_TOLERANCE = 2e-3


def _train(cfg_dict: dict, out_path: str) -> None:
    """One rank: 20 steps with the configured comms; rank 0 saves the global per-step losses."""
    with trainable_rank(cfg_dict) as (cfg, env, built):
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


FP8 = {"forward_precision": "fp8", "backward_precision": "fp8"}
CUDA = torch.device("cuda")  # codecs are built without a GPU; only their use needs one


def _plan(types_by_table: dict) -> ShardingPlan:
    return ShardingPlan({"model.embeddings": {
        table: ParameterSharding(sharding_type=t, compute_kernel="fused", ranks=[0]) for table, t in types_by_table.items()
    }})


def test_fp8_comms_name_the_row_wise_tables_torchrec_sends_in_fp16_and_bf16(caplog):
    plan = _plan({"t_a": "table_wise", "t_b": "row_wise", "t_c": "table_row_wise", "t_d": "row_wise"})
    found = substituted_precisions(plan, qcomm_codecs(FP8, CUDA))
    assert set(found) == {"row_wise", "table_row_wise"}  # table-wise all-to-all sends fp8 as asked
    assert found["row_wise"]["tables"] == ["t_b", "t_d"]
    assert found["row_wise"]["sent"] == {"forward": "fp16", "backward": "bf16"}
    assert found["row_wise"]["asked"] == {"forward": "fp8", "backward": "fp8"}
    with caplog.at_level(logging.WARNING, logger="ctr.parallel.comms"):
        warn_substituted_precisions(plan, qcomm_codecs(FP8, CUDA))
    said = " ".join(r.getMessage() for r in caplog.records if r.name == "ctr.parallel.comms")
    assert "row_wise tables (t_b, t_d) send forward fp16 / backward bf16, not the configured fp8 / fp8" in said
    assert "table_row_wise tables (t_c)" in said and "t_a" not in said


@pytest.mark.parametrize("comms", [{"forward_precision": p, "backward_precision": p} for p in ("fp32", "fp16", "int8")])
def test_precisions_every_collective_has_are_sent_as_asked(comms):
    plan = _plan({"t_a": "table_wise", "t_b": "row_wise", "t_c": "table_row_wise"})
    assert substituted_precisions(plan, qcomm_codecs(comms, CUDA)) == {}


def test_comms_bytes_count_what_each_sharding_type_really_sends():
    """4 ranks on 2 nodes, batch 10, dim 8, 100 rows; fp8 asked: row shards go at 2 bytes."""
    world, local, batch, table_bytes = 4, 2, 10, 100 * 8 * 4

    def row(sharding_type, shards):
        return {"table": sharding_type, "shape": [100, 8], "sharding_type": sharding_type, "element_bytes": 4,
                "bytes_per_rank": {r: table_bytes // len(shards) if sharding_type != "data_parallel" else table_bytes
                                   for r in shards}}

    rows = [row("table_wise", [0]), row("row_wise", [0, 1, 2, 3]), row("table_row_wise", [0, 1]),
            row("data_parallel", [0, 1, 2, 3])]
    sent = pooled_comms_bytes(rows, batch, world, local, wire_bytes(FP8, CUDA))
    by_type = sent["by_sharding_type"]
    # table-wise: 8 columns for 3 other ranks' 10 rows, fp8 all-to-all
    assert by_type["table_wise"] == {"forward": 3 * 10 * 8, "backward": 3 * 10 * 8}
    # row-wise: each of 4 shards reduce-scatters all 8 columns of the other ranks' rows, in fp16 / bf16
    assert by_type["row_wise"] == {"forward": 4 * 3 * 10 * 8 * 2, "backward": 4 * 3 * 10 * 8 * 2}
    # table-row-wise: 2 shards, each reduce-scatters (1 of 2) x 40 rows in the node, then all-to-alls its half
    twrw = 2 * (1 * 40 * 8 // 2 * 2 + 3 * 10 * 8 // 2 * 1)
    assert by_type["table_row_wise"] == {"forward": twrw, "backward": twrw}
    assert by_type["data_parallel"] == {"forward": 0, "backward": 4 * 2 * 3 * table_bytes // 4}
    assert sent["forward"] == sum(t["forward"] for t in by_type.values())
    assert sent["backward"] == sum(t["backward"] for t in by_type.values())
    fp16 = pooled_comms_bytes(rows, batch, world, local, wire_bytes({**FP8, "forward_precision": "fp16"}, CUDA))
    assert fp16["by_sharding_type"]["table_wise"]["forward"] == 2 * by_type["table_wise"]["forward"]

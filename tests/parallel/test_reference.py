"""The distributed reference test: sharded N-rank training equals plain 1-process training.

The 1-process side is independent plain PyTorch (F.embedding_bag tables with the
configured sparse optimizer, the dense tower written out with F.linear, Adam), fed by the
source's raw rows, so a bug anywhere in ctr's sparse path (hashing, KJT packing, sharding,
fused update, gradient scaling, DDP, the optimizer of data-parallel tables) shows up as a
difference. One case per sharding type that runs on CPU, a model mixing all of them
(with SGD on 2 ranks, whose step, unlike Adagrad's, scales with the gradient; with
row-wise Adagrad on 4 ranks), and the row-wise types where 2+ GPUs allow.

Row-wise Adagrad keeps one accumulator per row *of each shard* (FBGEMM updates each
shard on its own), so where the plan cuts a table's columns the reference gives each
column block its own optimizer state; with SGD the blocks make no difference.

Tolerance: float32 with different reduction orders (all-to-all, all-reduce, FBGEMM
kernels) agrees to ~1e-7 here; we assert rtol=1e-4, atol=1e-5 on every step's loss and
on every final weight.
"""

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from ctr.build import build_input_hashing, build_task, optimizers, shard
from ctr.data.reader import batches, num_steps
from ctr.features.hashing import feature_table_sizes
from ctr.parallel.process_group import init_distributed, shutdown
from ctr.parallel.state import full_state_dict, load_full_state
from ctr.train.loop import train
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks

RTOL, ATOL = 1e-4, 1e-5
STEPS = 10
# The reference's own choice of optimizer class per config name, not ctr's mapping.
REFERENCE_SPARSE = {"rowwise_adagrad": RowWiseAdagrad, "sgd": torch.optim.SGD}
# TINY tables are 8 wide: shards of 4 columns give every column-wise table two shards.
NARROW = "sharding.min_partition=4"
NEEDS_GPUS = pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason="row-wise sharding needs CUDA with one GPU per rank (>= 2 GPUs); not runnable on this machine",
)


def _table_sizes(cfg, source) -> Dict[str, int]:
    embedding = cfg.embedding
    return feature_table_sizes(source.sparse_names, embedding.num_embeddings, embedding.num_embeddings_per_feature)


def _column_blocks(plan) -> Dict[str, List[Tuple[int, int]]]:
    """(offset, width) of each column block the plan cut, per table; (0, dim) if uncut."""
    blocks = {}
    for module_plan in plan.plan.values():
        for table, sharding in module_plan.items():
            shards = sharding.sharding_spec.shards if sharding.sharding_spec else []
            blocks[table] = sorted({(s.shard_offsets[1], s.shard_sizes[1]) for s in shards})
    return blocks


def _train_sharded(cfg_dict: dict, init_path: str, out_path: str, broken_rank: int) -> None:
    """One rank of the ctr job; rank 0 saves the plan, global per-step losses and full weights."""
    cfg = OmegaConf.create(cfg_dict)
    env = init_distributed("gloo")
    try:
        torch.manual_seed(0)
        source = instantiate(cfg.data)
        hashing = build_input_hashing(cfg, source)
        task = build_task(cfg, source, torch.device("meta"), hashing)
        sharded = shard(task, env, cfg)
        model, plan, rows = sharded.model, sharded.plan, sharded.rows
        load_full_state(model, torch.load(init_path))
        optimizer = optimizers(model, cfg)
        if env.rank == broken_rank:  # the negative control: this rank skips its sparse updates
            for group in model.fused_optimizer.param_groups:
                group["lr"] = 0.0
        steps = num_steps(source.num_rows("train"), cfg.trainer.batch_size, env.world_size, drop_last=True)
        train_batches = (
            hashing(b) for b in batches(source, "train", cfg.trainer.batch_size, env.rank, env.world_size, True)
        )
        result = train(model, optimizer, train_batches, env, steps, log_every_steps=10**9, progress_bar=False)
        per_rank: List[List[float]] = [None] * env.world_size  # type: ignore[list-item]
        dist.all_gather_object(per_rank, result.losses)
        state = full_state_dict(model, env.device)
        if env.is_main:
            losses = [sum(step) / len(step) for step in zip(*per_rank)]
            torch.save({"losses": losses, "state": state, "plan": rows, "blocks": _column_blocks(plan)}, out_path)
    finally:
        shutdown()


def _train_reference(cfg, init: Dict[str, torch.Tensor], global_batch: int, blocks: Dict[str, List[Tuple[int, int]]]):
    """Plain PyTorch, one process, global batches: returns per-step losses and final weights."""
    source = instantiate(cfg.data)
    sizes = _table_sizes(cfg, source)
    tables = {}  # feature -> the table's column blocks, each a leaf with its own optimizer state
    for f in source.sparse_names:
        weight = init[f"model.embeddings.collection.embedding_bags.t_{f}.weight"]
        cuts = blocks[f"t_{f}"] or [(0, weight.shape[1])]
        tables[f] = [weight[:, o : o + w].clone().requires_grad_() for o, w in cuts]
    dense = {k: v.clone().requires_grad_() for k, v in init.items() if "embedding_bags" not in k}
    opt = cfg.optimizer
    sparse_kwargs = {"lr": opt.sparse_lr} if opt.sparse == "sgd" else {"lr": opt.sparse_lr, "eps": opt.sparse_eps}
    sparse_opt = REFERENCE_SPARSE[opt.sparse]([b for t in tables.values() for b in t], **sparse_kwargs)
    dense_opt = torch.optim.Adam(list(dense.values()), lr=opt.dense_lr)

    def forward(rows) -> torch.Tensor:
        ids = torch.from_numpy(rows.ids)
        pooled = [
            F.embedding_bag(ids[:, i : i + 1] % sizes[f], torch.cat(tables[f], dim=1), mode="sum")
            for i, f in enumerate(source.sparse_names)
        ]
        x = torch.cat([torch.from_numpy(rows.dense), *pooled], dim=1)
        for unit in range(cfg.model.num_residual_units):
            p = f"model.residual_units.{unit}."
            hidden = torch.relu(F.linear(x, dense[p + "inner.weight"], dense[p + "inner.bias"]))
            x = torch.relu(x + F.linear(hidden, dense[p + "outer.weight"], dense[p + "outer.bias"]))
        return F.linear(x, dense["model.scoring.weight"], dense["model.scoring.bias"]).squeeze(-1)

    losses = []
    for step in range(source.num_rows("train") // global_batch):
        rows = source.rows("train", step * global_batch, (step + 1) * global_batch)
        loss = F.binary_cross_entropy_with_logits(forward(rows), torch.from_numpy(rows.labels))
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
        losses.append(loss.item())
    final = {k: v.detach() for k, v in dense.items()}
    final.update({f"model.embeddings.collection.embedding_bags.t_{f}.weight": torch.cat(t, 1).detach() for f, t in tables.items()})
    return losses, final


def _sharded_vs_reference(tmp_path: Path, overrides: Sequence[str], world_size: int = 2, broken_rank: int = -1):
    # STEPS global batches of the TINY data, whatever the number of ranks.
    cfg = compose(*TINY, f"trainer.batch_size={640 // (STEPS * world_size)}", *overrides)
    torch.manual_seed(0)
    init = build_task(cfg, instantiate(cfg.data), torch.device("cpu")).state_dict()
    init = {k: v.detach().clone() for k, v in init.items()}
    torch.save(init, tmp_path / "init.pt")
    run_ranks(
        _train_sharded, world_size, OmegaConf.to_container(cfg, resolve=True),
        str(tmp_path / "init.pt"), str(tmp_path / "out.pt"), broken_rank,
    )
    sharded = torch.load(tmp_path / "out.pt")
    ref_losses, ref_state = _train_reference(cfg, init, cfg.trainer.batch_size * world_size, sharded["blocks"])
    return sharded, ref_losses, ref_state, init


def _assert_same(sharded, ref_losses, ref_state) -> None:
    assert len(sharded["losses"]) == len(ref_losses) == STEPS
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(ref_losses), rtol=RTOL, atol=ATOL)
    assert set(sharded["state"]) == set(ref_state)
    for key, expected in ref_state.items():
        torch.testing.assert_close(sharded["state"][key], expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{key}: {m}")


def _assert_trained(init, ref_state) -> None:
    moved = [k for k in init if not torch.equal(init[k], ref_state[k])]
    assert len(moved) == len(init), "every parameter must have trained, or the comparison proves little"


def _types(plan: List[dict]) -> Dict[str, str]:
    return {row["table"]: row["sharding_type"] for row in plan}


MIXED = {"t_cat_0": "data_parallel", "t_cat_1": "column_wise", "t_cat_2": "table_column_wise", "t_cat_3": "table_wise"}


@pytest.mark.parametrize(
    "overrides,world_size",
    [
        pytest.param(["sharding=table_wise"], 2, id="table_wise"),
        pytest.param(["sharding=column_wise", NARROW], 2, id="column_wise"),
        pytest.param(["sharding=table_column_wise", NARROW], 2, id="table_column_wise"),
        pytest.param(["sharding=data_parallel"], 2, id="data_parallel"),
        # SGD's step, unlike Adagrad's, scales with the gradient: this catches a wrong scale.
        pytest.param(["sharding=mixed", NARROW, "optimizer.sparse=sgd", "optimizer.sparse_lr=1.0"], 2, id="mixed-sgd"),
        pytest.param(["sharding=mixed", NARROW], 4, id="mixed-4-ranks"),
        pytest.param(["sharding=row_wise"], 2, id="row_wise", marks=NEEDS_GPUS),
        pytest.param(["sharding=table_row_wise"], 2, id="table_row_wise", marks=NEEDS_GPUS),
    ],
)
def test_sharded_training_matches_plain_single_process(tmp_path, overrides, world_size):
    sharded, ref_losses, ref_state, init = _sharded_vs_reference(tmp_path, overrides, world_size)
    plan = sharded["plan"]
    forced = compose(*overrides).sharding.sharding_type
    if "sharding=mixed" in overrides:
        assert {t: _types(plan)[t] for t in MIXED} == MIXED
        assert {row["table"]: row["ranks"] for row in plan}["t_cat_1"] == [1, 0]
        assert {row["table"]: row["ranks"] for row in plan}["t_cat_3"] == [1]
    else:
        assert set(_types(plan).values()) == {forced}
    for row in plan:  # the column-wise types must really have cut columns, or they test nothing
        if "column" in row["sharding_type"]:
            assert len(row["bytes_per_rank"]) == 2, row
    _assert_same(sharded, ref_losses, ref_state)
    _assert_trained(init, ref_state)


def test_reference_catches_a_rank_that_skips_its_sparse_update(tmp_path):
    sharded, ref_losses, ref_state, _ = _sharded_vs_reference(tmp_path, ["sharding=table_wise"], broken_rank=1)
    with pytest.raises(AssertionError):
        _assert_same(sharded, ref_losses, ref_state)

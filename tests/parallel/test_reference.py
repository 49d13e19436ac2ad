"""The distributed reference test: sharded 2-rank training equals plain 1-process training.

The 1-process side is independent plain PyTorch (F.embedding_bag tables with a row-wise
Adagrad, the dense tower written out with F.linear, Adam), fed by the source's raw rows,
so a bug anywhere in ctr's sparse path (hashing, KJT packing, sharding, fused update,
gradient scaling, DDP) shows up as a difference.

Tolerance: float32 with different reduction orders (all-to-all, all-reduce, FBGEMM
kernels) agrees to ~1e-6 here; we assert rtol=1e-4, atol=1e-5 over 10 steps.
"""

from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from ctr.data.reader import batches, num_steps
from ctr.features.hashing import ModuloHashing, feature_table_sizes
from ctr.parallel.model_parallel import distribute
from ctr.parallel.optimizers import apply_sparse_optimizer, combined_optimizer
from ctr.parallel.planner import plan_sharding
from ctr.parallel.process_group import init_distributed, shutdown
from ctr.parallel.state import full_state_dict, load_full_state
from ctr.train.loop import train
from ctr.train.run import build_task
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks

RTOL, ATOL = 1e-4, 1e-5
WORLD_SIZE = 2


def _table_sizes(cfg, source) -> Dict[str, int]:
    return feature_table_sizes(source.sparse_names, cfg.embedding.num_embeddings, cfg.embedding.num_embeddings_per_feature)


def _train_sharded(cfg_dict: dict, init_path: str, out_path: str, sharding_type: str, broken_rank: int) -> None:
    """One rank of the ctr job; rank 0 saves the global per-step losses and the full weights."""
    cfg = OmegaConf.create(cfg_dict)
    env = init_distributed("gloo")
    try:
        torch.manual_seed(0)
        source = instantiate(cfg.data)
        hashing = ModuloHashing(_table_sizes(cfg, source))
        task = build_task(cfg, source, torch.device("meta"))
        opt = cfg.optimizer
        apply_sparse_optimizer(task, opt.sparse, opt.sparse_lr, opt.sparse_eps, env.device)
        plan = plan_sharding(task, env, sharding_type, cfg.trainer.batch_size)
        model = distribute(task, env, plan)
        load_full_state(model, torch.load(init_path))
        optimizer = combined_optimizer(model, opt.dense_lr)
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
        state = full_state_dict(model)
        if env.is_main:
            losses = [sum(step) / len(step) for step in zip(*per_rank)]
            torch.save({"losses": losses, "state": state}, out_path)
    finally:
        shutdown()


def _train_reference(cfg, init: Dict[str, torch.Tensor], global_batch: int):
    """Plain PyTorch, one process, global batches: returns per-step losses and final weights."""
    source = instantiate(cfg.data)
    sizes = _table_sizes(cfg, source)
    tables = {f: init[f"model.embeddings.embedding_bags.t_{f}.weight"].clone().requires_grad_() for f in source.sparse_names}
    dense = {k: v.clone().requires_grad_() for k, v in init.items() if "embedding_bags" not in k}
    sparse_opt = RowWiseAdagrad(list(tables.values()), lr=cfg.optimizer.sparse_lr, eps=cfg.optimizer.sparse_eps)
    dense_opt = torch.optim.Adam(list(dense.values()), lr=cfg.optimizer.dense_lr)

    def forward(rows) -> torch.Tensor:
        ids = torch.from_numpy(rows.ids)
        pooled = [
            F.embedding_bag(ids[:, i : i + 1] % sizes[f], tables[f], mode="sum")
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
    final.update({f"model.embeddings.embedding_bags.t_{f}.weight": t.detach() for f, t in tables.items()})
    return losses, final


def _sharded_vs_reference(tmp_path: Path, sharding_type: str, broken_rank: int = -1):
    cfg = compose(*TINY)
    torch.manual_seed(0)
    init = build_task(cfg, instantiate(cfg.data), torch.device("cpu")).state_dict()
    init = {k: v.detach().clone() for k, v in init.items()}
    torch.save(init, tmp_path / "init.pt")
    run_ranks(
        _train_sharded, WORLD_SIZE, OmegaConf.to_container(cfg, resolve=True),
        str(tmp_path / "init.pt"), str(tmp_path / "out.pt"), sharding_type, broken_rank,
    )
    sharded = torch.load(tmp_path / "out.pt")
    ref_losses, ref_state = _train_reference(cfg, init, cfg.trainer.batch_size * WORLD_SIZE)
    return sharded, ref_losses, ref_state, init


def _assert_same(sharded, ref_losses, ref_state) -> None:
    assert len(sharded["losses"]) == len(ref_losses) == 10
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(ref_losses), rtol=RTOL, atol=ATOL)
    assert set(sharded["state"]) == set(ref_state)
    for key, expected in ref_state.items():
        torch.testing.assert_close(sharded["state"][key], expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("sharding_type", ["table_wise", "column_wise"])
def test_two_ranks_match_plain_single_process(tmp_path, sharding_type):
    sharded, ref_losses, ref_state, init = _sharded_vs_reference(tmp_path, sharding_type)
    _assert_same(sharded, ref_losses, ref_state)
    moved = [k for k in init if not torch.equal(init[k], ref_state[k])]
    assert len(moved) == len(init), "every parameter must have trained, or the comparison proves little"


def test_reference_catches_a_rank_that_skips_its_sparse_update(tmp_path):
    sharded, ref_losses, ref_state, _ = _sharded_vs_reference(tmp_path, "table_wise", broken_rank=1)
    with pytest.raises(AssertionError):
        _assert_same(sharded, ref_losses, ref_state)

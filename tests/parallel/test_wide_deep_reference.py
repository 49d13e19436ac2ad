"""Wide & Deep in parallel: the wide part trains exactly as a scalar linear model with the
configured optimizer (fused kernel and data-parallel tables alike), and 2-rank training
equals 1-rank training.

The wide weights are 4-column rows whose sum is the weight, trained at lr / 4
(`ctr.models.wide_deep.WideLinear`); the reference here is a plain scalar logistic
regression trained by hand. Tolerance as in `test_reference`: rtol=1e-4, atol=1e-5 on
every step's loss and every final weight.
"""

from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.build import build_task, optimizers, shard
from ctr.models.table_groups import TableGroup
from ctr.models.task import ClickTask
from ctr.models.wide_deep import WideLinear, wide_tables
from ctr.parallel.process_group import init_distributed, shutdown
from ctr.parallel.state import full_state_dict
from ctr.train.loop import train
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks
from tests.parallel.test_reference import ATOL, RTOL, STEPS, _assert_same, _train_sharded

ROWS = {"a": 7, "b": 5}  # a: one id per row; b: a bag of 0 to 3 ids
BATCH = 16


class WideOnly(nn.Module):
    """The wide part of Wide & Deep as a whole model, plus a bias the test holds at 0
    (optimizer.dense_lr=0), since ctr's optimizer expects a dense part."""

    def __init__(self) -> None:
        super().__init__()
        tables = [EmbeddingBagConfig(name=f"t_{k}", feature_names=[k], num_embeddings=n, embedding_dim=8) for k, n in ROWS.items()]
        self.wide = WideLinear(wide_tables(tables, list(ROWS), []), torch.device("meta"))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        return self.wide(sparse_features) + self.bias

    def table_groups(self) -> Dict[str, TableGroup]:
        return {"wide": self.wide.table_group()}


def _batches() -> List[Dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(STEPS):
        b_lengths = torch.randint(0, 4, (BATCH,), generator=g)
        out.append({
            "a": torch.randint(0, ROWS["a"], (BATCH,), generator=g),
            "b": torch.randint(0, ROWS["b"], (int(b_lengths.sum()),), generator=g),
            "b_lengths": b_lengths,
            "labels": torch.randint(0, 2, (BATCH,), generator=g).float(),
        })
    return out


def _as_batch(step: Dict[str, torch.Tensor]) -> Batch:
    lengths = torch.cat([torch.ones(BATCH, dtype=torch.int64), step["b_lengths"]])
    kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.cat([step["a"], step["b"]]), lengths)
    return Batch(dense_features=torch.zeros(BATCH, 1), sparse_features=kjt, labels=step["labels"])


def _train_wide(cfg_dict: dict, out_path: str) -> None:
    cfg = OmegaConf.create(cfg_dict)
    env = init_distributed("gloo")
    try:
        task = ClickTask(WideOnly())
        model = shard(task, env, cfg).model
        optimizer = optimizers(model, cfg)
        result = train(model, optimizer, (_as_batch(b) for b in _batches()), env, STEPS, 10**9, progress_bar=False)
        torch.save({"losses": result.losses, "state": full_state_dict(model, env.device)}, out_path)
    finally:
        shutdown()


def _hand_trained(name: str, lr: float, eps: float):
    """Scalar weights, plain logistic regression, the optimizer's update written out."""
    w = {k: torch.zeros(n, requires_grad=True) for k, n in ROWS.items()}
    accumulated = {k: torch.zeros(n) for k in ROWS for n in [ROWS[k]]}
    losses = []
    for step in _batches():
        row_of_b = torch.repeat_interleave(torch.arange(BATCH), step["b_lengths"])
        logits = w["a"][step["a"]] + torch.zeros(BATCH).index_add(0, row_of_b, w["b"][step["b"]])
        loss = F.binary_cross_entropy_with_logits(logits, step["labels"])
        grads = torch.autograd.grad(loss, [w["a"], w["b"]])
        with torch.no_grad():
            for (k, weight), g in zip(w.items(), grads):
                if name == "sgd":
                    weight -= lr * g
                else:  # Adagrad; row-wise Adagrad is the same on a 1-wide row
                    accumulated[k] += g * g
                    weight -= lr * g / (accumulated[k].sqrt() + eps)
        losses.append(loss.item())
    return losses, {k: v.detach() for k, v in w.items()}


@pytest.mark.parametrize("overrides,optimizer", [
    (["sharding=table_wise", "optimizer.wide.name=sgd", "optimizer.wide.lr=2.0"], ("sgd", 2.0)),
    (["sharding=table_wise", "optimizer.wide.name=adagrad", "optimizer.wide.lr=0.3"], ("adagrad", 0.3)),
    (["sharding=table_wise", "optimizer.sparse_lr=0.3"], ("rowwise_adagrad", 0.3)),  # wide null: the sparse optimizer
    (["sharding=data_parallel", "optimizer.wide.name=adagrad", "optimizer.wide.lr=0.3"], ("adagrad", 0.3)),  # unfused tables
], ids=["fused-sgd", "fused-adagrad", "fused-rowwise_adagrad", "data_parallel-adagrad"])
def test_the_wide_part_trains_as_a_scalar_linear_model(tmp_path, overrides, optimizer):
    cfg = compose(*TINY, f"trainer.batch_size={BATCH}", "optimizer.dense_lr=0.0", *overrides)
    run_ranks(_train_wide, 1, OmegaConf.to_container(cfg, resolve=True), str(tmp_path / "out.pt"))
    out = torch.load(tmp_path / "out.pt")
    losses, weights = _hand_trained(*optimizer, eps=1e-8)
    torch.testing.assert_close(torch.tensor(out["losses"]), torch.tensor(losses), rtol=RTOL, atol=ATOL)
    for k, expected in weights.items():
        rows = out["state"][f"model.wide.collection.embedding_bags.wide_t_{k}.weight"]
        torch.testing.assert_close(rows.sum(dim=1), expected, rtol=RTOL, atol=ATOL)
        assert torch.count_nonzero(expected) == ROWS[k], "every weight must have trained"


# TINY's data with Wide & Deep: all features wide, one cross, the wide tables on Adagrad.
TINY_WIDE_DEEP = [
    *(o for o in TINY if not o.startswith("model.")),
    "model=wide_deep",
    "model.hidden_dims=[16,8]",
    "model.wide.crosses=[{features: [cat_0, cat_1], num_embeddings: 50}]",
    "optimizer.wide.name=adagrad", "optimizer.wide.lr=0.1",
]


def _world(tmp_path: Path, world_size: int, overrides, broken_rank: int = -1) -> dict:
    cfg = compose(*TINY_WIDE_DEEP, f"trainer.batch_size={640 // (STEPS * world_size)}", *overrides)
    torch.manual_seed(0)
    init = tmp_path / "init.pt"
    if not init.exists():
        torch.save({k: v.detach().clone() for k, v in build_task(cfg, instantiate(cfg.data), torch.device("cpu")).state_dict().items()}, init)
    out = tmp_path / f"out{world_size}.pt"
    run_ranks(_train_sharded, world_size, OmegaConf.to_container(cfg, resolve=True), str(init), str(out), broken_rank)
    return torch.load(out)


@pytest.mark.parametrize("overrides", [["sharding=table_wise"], ["sharding=data_parallel"]], ids=["table_wise", "data_parallel"])
def test_wide_deep_on_two_ranks_equals_one_rank(tmp_path, overrides):
    one, two = _world(tmp_path, 1, overrides), _world(tmp_path, 2, overrides)
    assert {row["table"] for row in one["plan"]} >= {"wide_t_cat_0", "wide_t_cat_0_x_cat_1", "t_cat_0"}
    _assert_same(two, one["losses"], one["state"])
    init = torch.load(tmp_path / "init.pt")
    assert all(not torch.equal(init[k], one["state"][k]) for k in init), "every parameter must have trained"


def test_the_comparison_catches_a_rank_that_skips_its_sparse_update(tmp_path):
    one, broken = _world(tmp_path, 1, ["sharding=table_wise"]), _world(tmp_path, 2, ["sharding=table_wise"], broken_rank=1)
    with pytest.raises(AssertionError):
        _assert_same(broken, one["losses"], one["state"])

"""Model assembly: a model's table groups get their optimizers from the config, through
sharding, with nothing in `ctr.parallel` knowing the model."""

from typing import Dict

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.build import build_trainable, mark_table_optimizers, optimizers, shard, table_optimizers
from ctr.models.table_groups import TableGroup
from ctr.models.task import ClickTask
from ctr.parallel.optimizers import DENSE, TableOptimizer
from ctr.parallel.process_group import init_distributed, shutdown
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks
from tests.parallel.test_table_weight_decay import fused_kernels

# Users' tables on their own optimizer settings (`optimizer.wide`) at half their learning rate.
USERS = ["optimizer.wide.name=sgd", "optimizer.wide.lr=0.4"]


def _collection(name: str) -> EmbeddingBagCollection:
    table = EmbeddingBagConfig(name=f"t_{name}", feature_names=[name], num_embeddings=10, embedding_dim=4)
    return EmbeddingBagCollection(tables=[table], device=torch.device("meta"))


class TwoTowers(nn.Module):
    """A third model, unknown to ctr: item and user tables in groups of its own naming."""

    def __init__(self, group_users: bool = True) -> None:
        super().__init__()
        self.items, self.users = _collection("item"), _collection("user")
        self.head = nn.Linear(8, 1)
        self.group_users = group_users

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = torch.cat([self.items(sparse_features).values(), self.users(sparse_features).values()], dim=1)
        return self.head(pooled).squeeze(-1)

    def table_groups(self) -> Dict[str, TableGroup]:
        groups = {"items": TableGroup([self.items])}
        if self.group_users:
            groups["users"] = TableGroup([self.users], settings="wide", lr_scale=0.5)
        return groups


def test_each_group_gets_its_settings_from_the_config():
    task = ClickTask(TwoTowers())
    groups = table_optimizers(task, compose(*TINY, *USERS).optimizer)
    assert groups["items"] == ([task.model.items], TableOptimizer("rowwise_adagrad", 0.05, 1e-8, "optimizer.sparse"))
    assert groups["users"] == ([task.model.users], TableOptimizer("sgd", 0.2, 1e-8, "optimizer.wide.name"))


def test_a_collection_in_no_group_fails_naming_it():
    with pytest.raises(ValueError, match=r"TwoTowers.table_groups\(\) leaves out .*'model.users'"):
        mark_table_optimizers(ClickTask(TwoTowers(group_users=False)), compose(*TINY).optimizer, torch.device("cpu"))


def _learning_rates(cfg_dict: dict, out_path: str) -> None:
    """Shards the model on one rank; saves each of its optimizers' learning rates (the fused
    kernels keep theirs in fp32, hence the rounding)."""
    cfg = OmegaConf.create(cfg_dict)
    env = init_distributed("auto")
    try:
        combined = optimizers(shard(ClickTask(TwoTowers()), env, cfg).model, cfg)
        torch.save({name: sorted({round(g["lr"], 6) for g in opt.param_groups}) for name, opt in combined.optimizers}, out_path)
    finally:
        shutdown()


@pytest.mark.parametrize("sharding,expected", [
    ("table_wise", {"sparse": [0.05, 0.2], "dense": [1e-3]}),  # fused: the groups' kernels
    ("data_parallel", {"sparse": [], "items_replicated": [0.05], "users_replicated": [0.2], "dense": [1e-3]}),
])
def test_sharding_keeps_each_groups_optimizer(tmp_path, sharding, expected):
    cfg = compose(*TINY, f"sharding={sharding}", *USERS)
    run_ranks(_learning_rates, 1, OmegaConf.to_container(cfg, resolve=True), str(tmp_path / "lr.pt"))
    assert torch.load(tmp_path / "lr.pt") == expected


def _regularisation(cfg_dict: dict, out_path: str) -> None:
    """Builds the configured model sharded on one rank; saves what its modules and optimizers got."""
    cfg = OmegaConf.create(cfg_dict)
    env = init_distributed("auto")
    try:
        trainable = build_trainable(cfg, env)
        kernels = fused_kernels(trainable.model)
        torch.save({
            "dropout": sorted({m.p for m in trainable.model.modules() if isinstance(m, nn.Dropout)}),
            "batch_norms": sum(isinstance(m, nn.BatchNorm1d) for m in trainable.model.modules()),
            "table_decay": sorted({(k.optimizer_args.weight_decay, int(k.weight_decay_mode)) for k in kernels}),
            "dense_decay": [g["weight_decay"] for name, opt in trainable.optimizer.optimizers if name == DENSE
                            for g in opt.param_groups],
        }, out_path)
    finally:
        shutdown()


@pytest.mark.parametrize("overrides,expected", [
    ([], {"dropout": [], "batch_norms": 0, "table_decay": [(0.0, 0)], "dense_decay": [0.0]}),
    (["model.dropout=0.3", "model.batch_norm=true", "optimizer.dense_weight_decay=1e-5"],
     {"dropout": [0.3], "batch_norms": 2, "table_decay": [(0.0, 0)], "dense_decay": [1e-5]}),
    (["model=wide_deep", "model.hidden_dims=[8,4]", "model.dropout=0.1", "model.batch_norm=true"],
     {"dropout": [0.1], "batch_norms": 2, "table_decay": [(0.0, 0)], "dense_decay": [0.0]}),
], ids=["off", "deep_crossing", "wide_deep"])
def test_dropout_batch_norm_and_dense_weight_decay_reach_the_model_and_its_optimizer(tmp_path, overrides, expected):
    tiny = [o for o in TINY if not o.startswith("model.")] if "model=wide_deep" in overrides else TINY
    cfg = compose(*tiny, *overrides)
    run_ranks(_regularisation, 1, OmegaConf.to_container(cfg, resolve=True), str(tmp_path / "out.pt"))
    got = torch.load(tmp_path / "out.pt")
    got["table_decay"] = [(pytest.approx(decay), mode) for decay, mode in got["table_decay"]]
    assert got == expected


@pytest.mark.parametrize("overrides,message", [
    (["optimizer.sparse=adagrad", "optimizer.sparse_weight_decay=1e-4"],
     r"optimizer.sparse_weight_decay=0.0001 with optimizer.sparse='adagrad': FBGEMM's fused adagrad has no weight decay"),
    (["optimizer.sparse_weight_decay=-1"], r"optimizer.sparse_weight_decay=-1.0: expected 0 or more"),
])
def test_a_table_weight_decay_the_fused_kernel_cannot_apply_fails_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        table_optimizers(ClickTask(TwoTowers()), compose(*TINY, *overrides).optimizer)

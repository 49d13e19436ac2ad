"""Optimizers: FBGEMM's fused in-backward optimizer for tables (the same optimizer, unfused,
for data-parallel tables), Adam for the dense tower.

Tables come in named groups, each with its own `TableOptimizer` (the model decides the
groups, the builder their settings: `ctr.build`); this module knows no model. Tables
named in `embedding.update` are frozen or stepped every k steps (`ctr.parallel.table_updates`).
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Sequence, Tuple, Type

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from ctr.config import TableUpdate
from ctr.parallel.table_updates import EveryKSteps, Frozen, parameter_table

# TorchRec maps these optimizer classes onto FBGEMM's fused TBE optimizers.
SPARSE_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": torch.optim.Adam,
}
# The name of the dense tower's optimizer inside the combined optimizer; the others update tables.
DENSE = "dense"
# FBGEMM 1.8's CPU kernels implement only these.
CPU_SPARSE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
# FBGEMM's fused kernels with a weight decay whose mode ctr can set through TorchRec: row-wise
# Adagrad (its torchrec class takes `weight_decay_mode` along); sgd's and adagrad's have none.
# Its CPU kernel (fbgemm-gpu-cpu 1.8) ignores both (tests/parallel/test_table_weight_decay.py):
# the decay is applied on CUDA only.
WEIGHT_DECAY_OPTIMIZERS = ("rowwise_adagrad",)


@dataclass(frozen=True)
class TableOptimizer:
    """The optimizer of a group of tables; `setting` is the config key that chose `name`.

    `weight_decay` > 0 is an L2 penalty that FBGEMM's fused update adds to the gradient of
    each row a batch reads (`WeightDecayMode.L2`), as the CTR libraries regularise the
    embeddings a batch uses; TorchRec passes the optimizer's keyword arguments on to
    FBGEMM as its fused parameters. Data-parallel tables (the dense kernel, no fused update)
    take the same arguments in TorchRec's `RowWiseAdagrad`, whose dense gradient decays every row.
    """

    name: str
    lr: float
    eps: float
    setting: str = "optimizer.sparse"
    weight_decay: float = 0.0
    weight_decay_setting: str = "optimizer.sparse_weight_decay"

    def __post_init__(self) -> None:
        if self.weight_decay < 0:
            raise ValueError(f"{self.weight_decay_setting}={self.weight_decay}: expected 0 or more")
        if self.weight_decay and self.name not in WEIGHT_DECAY_OPTIMIZERS:
            raise ValueError(f"{self.weight_decay_setting}={self.weight_decay} with {self.setting}={self.name!r}: "
                             f"FBGEMM's fused {self.name} has no weight decay; use one of "
                             f"{list(WEIGHT_DECAY_OPTIMIZERS)}")

    def kwargs(self) -> dict:
        kwargs = {"lr": self.lr} if self.name == "sgd" else {"lr": self.lr, "eps": self.eps}
        if self.weight_decay:
            kwargs.update(weight_decay=self.weight_decay, weight_decay_mode=WeightDecayMode.L2)
        return kwargs

    def build(self, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
        return SPARSE_OPTIMIZERS[self.name](params, **self.kwargs())


# A frozen table's fused kernel: its own TBE, whose update w − 0·g leaves w as it is.
FROZEN = TableOptimizer(name="sgd", lr=0.0, eps=0.0, setting="embedding.update")

# group name → (the group's embedding collections, their optimizer)
TableGroups = Mapping[str, Tuple[Sequence[nn.Module], TableOptimizer]]


def _parameters(modules: Sequence[nn.Module]) -> list:
    return [param for module in modules for param in module.parameters()]


def apply_table_optimizer(modules: Sequence[nn.Module], optimizer: TableOptimizer, device: torch.device) -> None:
    """Marks the tables of `modules` for a fused update inside the backward pass.

    DistributedModelParallel reads the mark and builds FBGEMM's fused kernel with that
    optimizer, so table gradients are never materialised.
    """
    _mark(_parameters(modules), optimizer, device)


def _mark(params: Sequence[torch.Tensor], optimizer: TableOptimizer, device: torch.device) -> None:
    if device.type == "cpu" and optimizer.name not in CPU_SPARSE_OPTIMIZERS:
        raise ValueError(
            f"{optimizer.setting}={optimizer.name!r} has no FBGEMM CPU kernel; "
            f"on CPU use one of {list(CPU_SPARSE_OPTIMIZERS)}"
        )
    if device.type == "cpu" and optimizer.weight_decay:
        raise ValueError(
            f"{optimizer.weight_decay_setting}: FBGEMM's CPU kernel leaves the weight decay out of its fused update "
            "(fbgemm-gpu-cpu 1.8), so the tables would train without it; table weight decay needs CUDA (on CPU use "
            "optimizer.dense_weight_decay, model.dropout or model.batch_norm)"
        )
    if params:
        apply_optimizer_in_backward(SPARSE_OPTIMIZERS[optimizer.name], list(params), optimizer.kwargs())


def apply_table_optimizers(
    groups: TableGroups, device: torch.device, updates: Mapping[str, TableUpdate] = {}
) -> None:
    """Marks every group's tables for its fused optimizer (before planning: the plan reads the
    marks); frozen tables for `FROZEN`, every_k_steps tables not at all (they run unfused)."""
    frozen = []
    for modules, optimizer in groups.values():
        normal = []
        for name, param in ((n, p) for module in modules for n, p in module.named_parameters()):
            mode = updates.get(parameter_table(name))
            if mode == TableUpdate.frozen:
                frozen.append(param)
            elif mode is None:
                normal.append(param)
        _mark(normal, optimizer, device)
    _mark(frozen, FROZEN, device)


def fused_state_bytes(model: DistributedModelParallel) -> int:
    """Bytes of the fused tables' optimizer state on this rank: its shards of each state tensor.

    Row-wise Adagrad keeps one fp32 per row (of each column shard), Adagrad one per weight, SGD none.
    """
    return sum(
        local.numel() * local.element_size()
        for state in model.fused_optimizer.state.values()
        for value in state.values()
        for local in ([s.tensor for s in value.local_shards()] if isinstance(value, ShardedTensor) else [value])
        if isinstance(local, torch.Tensor)
    )


def combined_optimizer(
    model: DistributedModelParallel, groups: TableGroups, dense_lr: float, dense_weight_decay: float = 0.0,
    updates: Mapping[str, TableUpdate] = {}, every_k: int = 1,
) -> CombinedOptimizer:
    """The fused table optimizers (already inside the sharded model), each group's optimizer
    for its tables without a fused kernel (stepped every `every_k` steps for its
    every_k_steps tables; never for frozen ones), and Adam (L2 penalty `dense_weight_decay`)
    for the rest. `groups` name the sharded model's collections.

    Data-parallel tables use the dense kernel, which ignores the in-backward mark: left
    to the dense optimizer they would train with Adam, not the configured optimizer.
    """
    unfused = dict(in_backward_optimizer_filter(model.named_parameters()))
    optimizers = [("sparse", model.fused_optimizer)]
    table_params = set()
    frozen = {}
    for group, (modules, optimizer) in groups.items():
        params = {id(param) for param in _parameters(modules)}
        table_params |= params
        by_update: Dict[object, Dict[str, torch.Tensor]] = {}
        for key, param in unfused.items():
            if id(param) in params:
                by_update.setdefault(updates.get(parameter_table(key)), {})[key] = param
        frozen.update(by_update.pop(TableUpdate.frozen, {}))
        if by_update.get(None):
            optimizers.append((f"{group}_replicated", KeyedOptimizerWrapper(by_update[None], optimizer.build)))
        if by_update.get(TableUpdate.every_k_steps):
            optimizers.append((f"{group}_every_{every_k}_steps",
                               EveryKSteps(KeyedOptimizerWrapper(by_update[TableUpdate.every_k_steps], optimizer.build), every_k)))
    if frozen:
        optimizers.append(("frozen", Frozen(KeyedOptimizerWrapper(frozen, FROZEN.build))))
    dense = {key: param for key, param in unfused.items() if id(param) not in table_params}
    if dense:  # a model of tables alone (Item2Vec) has nothing for Adam, which refuses an empty list
        optimizers.append((DENSE, KeyedOptimizerWrapper(
            dense, lambda params: torch.optim.Adam(params, lr=dense_lr, weight_decay=dense_weight_decay))))
    return CombinedOptimizer(optimizers)

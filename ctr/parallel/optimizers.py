"""Optimizers: FBGEMM's fused in-backward optimizer for tables (the same optimizer, unfused,
for data-parallel tables), Adam for the dense tower."""

from typing import Dict, Type

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

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


def sparse_optimizer_kwargs(name: str, lr: float, eps: float) -> dict:
    return {"lr": lr} if name == "sgd" else {"lr": lr, "eps": eps}


def apply_sparse_optimizer(module: nn.Module, name: str, lr: float, eps: float, device: torch.device) -> None:
    """Marks every embedding table for a fused update inside the backward pass.

    DistributedModelParallel reads the mark and builds FBGEMM's fused kernel with that
    optimizer, so table gradients are never materialised.
    """
    if name not in SPARSE_OPTIMIZERS:
        raise ValueError(f"optimizer.sparse={name!r}: expected one of {sorted(SPARSE_OPTIMIZERS)}")
    if device.type == "cpu" and name not in CPU_SPARSE_OPTIMIZERS:
        raise ValueError(
            f"optimizer.sparse={name!r} has no FBGEMM CPU kernel; on CPU use one of {list(CPU_SPARSE_OPTIMIZERS)}"
        )
    table_params = [
        param
        for submodule in module.modules()
        if isinstance(submodule, EmbeddingBagCollection)
        for param in submodule.parameters()
    ]
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[name], table_params, sparse_optimizer_kwargs(name, lr, eps))


def combined_optimizer(model: nn.Module, sparse: str, sparse_lr: float, sparse_eps: float, dense_lr: float) -> CombinedOptimizer:
    """The fused table optimizers (already inside the sharded model), the configured sparse
    optimizer for tables without a fused kernel, and Adam for the rest.

    Data-parallel tables use the dense kernel, which ignores the in-backward mark: left
    to the dense optimizer they would train with Adam, not the configured optimizer.
    """
    table_ids = {
        id(param)
        for submodule in model.modules()
        if isinstance(submodule, ShardedEmbeddingBagCollection)
        for param in submodule.parameters()
    }
    unfused = dict(in_backward_optimizer_filter(model.named_parameters()))
    tables = {name: param for name, param in unfused.items() if id(param) in table_ids}
    dense = {name: param for name, param in unfused.items() if id(param) not in table_ids}
    optimizers = [("sparse", model.fused_optimizer)]
    if tables:
        kwargs = sparse_optimizer_kwargs(sparse, sparse_lr, sparse_eps)
        optimizers.append(
            ("sparse_replicated", KeyedOptimizerWrapper(tables, lambda params: SPARSE_OPTIMIZERS[sparse](params, **kwargs)))
        )
    optimizers.append((DENSE, KeyedOptimizerWrapper(dense, lambda params: torch.optim.Adam(params, lr=dense_lr))))
    return CombinedOptimizer(optimizers)

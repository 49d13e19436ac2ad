"""Optimizers: FBGEMM's fused in-backward optimizer for tables, a regular one for the dense tower."""

from typing import Dict, Type

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
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


def combined_optimizer(model: nn.Module, dense_lr: float) -> CombinedOptimizer:
    """The fused table optimizers (already inside the sharded model) plus Adam for the rest."""
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    dense = KeyedOptimizerWrapper(dense_params, lambda params: torch.optim.Adam(params, lr=dense_lr))
    return CombinedOptimizer([model.fused_optimizer, dense])

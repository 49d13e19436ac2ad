"""Optimizers: FBGEMM's fused in-backward optimizer for tables (the same optimizer, unfused,
for data-parallel tables), Adam for the dense tower."""

from typing import Dict, Type

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.model_parallel import DistributedModelParallel
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
# `optimizer.state_precision`. FBGEMM 1.8 stores a fused optimizer's state in another precision
# (its `optimizer_state_dtypes`) only for partial row-wise Adam and ensemble row-wise Adagrad,
# which have CUDA kernels alone; every optimizer above keeps fp32 state, on every device.
STATE_PRECISIONS = ("fp32", "fp16", "bf16")


def sparse_optimizer_kwargs(name: str, lr: float, eps: float) -> dict:
    return {"lr": lr} if name == "sgd" else {"lr": lr, "eps": eps}


def check_state_precision(precision: str, name: str) -> None:
    """Fails at start-up for an optimizer-state precision FBGEMM does not give `name`'s fused kernel."""
    if precision not in STATE_PRECISIONS:
        raise ValueError(f"optimizer.state_precision={precision!r}: expected one of {list(STATE_PRECISIONS)}")
    if precision != "fp32":
        raise ValueError(
            f"optimizer.state_precision={precision!r}: FBGEMM 1.8 keeps optimizer state in {precision} only for "
            f"partial row-wise Adam and ensemble row-wise Adagrad (CUDA kernels only); optimizer.sparse={name!r}, "
            f"like every sparse optimizer here ({sorted(SPARSE_OPTIMIZERS)}; on CPU {list(CPU_SPARSE_OPTIMIZERS)}), "
            "keeps its state (SGD has none) in fp32: use optimizer.state_precision=fp32"
        )


def apply_sparse_optimizer(
    module: nn.Module, name: str, lr: float, eps: float, device: torch.device, state_precision: str = "fp32"
) -> None:
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
    check_state_precision(state_precision, name)
    table_params = [
        param
        for submodule in module.modules()
        if isinstance(submodule, EmbeddingBagCollection)
        for param in submodule.parameters()
    ]
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[name], table_params, sparse_optimizer_kwargs(name, lr, eps))


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

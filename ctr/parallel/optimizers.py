"""Optimizers: FBGEMM's fused in-backward optimizer for tables (the same optimizer, unfused,
for data-parallel tables), Adam for the dense tower.

The wide part of Wide & Deep may have its own table optimizer (`optimizer.wide`). The
paper trained it with FTRL; FBGEMM has no FTRL kernel, so the choice is among the fused
ones (sgd, adagrad, rowwise_adagrad on CPU; Adagrad is FTRL's per-coordinate step
without its L1 term).
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple, Type

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

from ctr.models.wide_deep import WideLinear

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


# (optimizer name, learning rate, eps) of a group of tables.
TableOptimizer = Tuple[str, float, float]


def apply_sparse_optimizer(
    module: nn.Module, name: str, lr: float, eps: float, device: torch.device,
    exclude: Sequence[nn.Module] = (), setting: str = "optimizer.sparse",
) -> None:
    """Marks every embedding table (but those of the collections in `exclude`) for a fused
    update inside the backward pass.

    DistributedModelParallel reads the mark and builds FBGEMM's fused kernel with that
    optimizer, so table gradients are never materialised.
    """
    if name not in SPARSE_OPTIMIZERS:
        raise ValueError(f"{setting}={name!r}: expected one of {sorted(SPARSE_OPTIMIZERS)}")
    if device.type == "cpu" and name not in CPU_SPARSE_OPTIMIZERS:
        raise ValueError(
            f"{setting}={name!r} has no FBGEMM CPU kernel; on CPU use one of {list(CPU_SPARSE_OPTIMIZERS)}"
        )
    table_params = [
        param
        for submodule in module.modules()
        if isinstance(submodule, EmbeddingBagCollection) and not any(submodule is m for m in exclude)
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


def wide_optimizer(opt: Mapping) -> TableOptimizer:
    """The wide tables' optimizer: `optimizer.wide` (name, lr, eps; a null field: the sparse
    optimizer's), at lr / `WideLinear.COLUMNS`, which makes a 4-column row exactly a scalar weight at lr."""
    wide = opt.get("wide") or {}
    name = wide.get("name") or opt.sparse
    lr = opt.sparse_lr if wide.get("lr") is None else wide.get("lr")
    eps = opt.sparse_eps if wide.get("eps") is None else wide.get("eps")
    return name, lr / WideLinear.COLUMNS, eps


def apply_table_optimizers(module: nn.Module, opt: Mapping, device: torch.device) -> None:
    """Marks the tables for their fused optimizers: the wide part's (`wide_optimizer`), the sparse one for the rest."""
    check_state_precision(opt.state_precision, opt.sparse)
    wide = [m.collection for m in module.modules() if isinstance(m, WideLinear)]
    apply_sparse_optimizer(module, opt.sparse, opt.sparse_lr, opt.sparse_eps, device, exclude=wide)
    name, lr, eps = wide_optimizer(opt)
    setting = "optimizer.wide.name" if (opt.get("wide") or {}).get("name") else "optimizer.sparse"
    for collection in wide:
        apply_sparse_optimizer(collection, name, lr, eps, device, setting=setting)


def combined_optimizer(
    model: nn.Module, sparse: str, sparse_lr: float, sparse_eps: float, dense_lr: float,
    wide: Optional[TableOptimizer] = None,
) -> CombinedOptimizer:
    """The fused table optimizers (already inside the sharded model), the configured sparse
    optimizer for tables without a fused kernel (`wide`, as `wide_optimizer` gives it, for
    the wide part's; None: the sparse one at lr / `WideLinear.COLUMNS`), and Adam for the rest.

    Data-parallel tables use the dense kernel, which ignores the in-backward mark: left
    to the dense optimizer they would train with Adam, not the configured optimizer.
    """
    wide_tables = {id(param) for m in model.modules() if isinstance(m, WideLinear) for param in m.collection.parameters()}
    tables_of = {
        id(param): "wide" if id(param) in wide_tables else "sparse"
        for submodule in model.modules()
        if isinstance(submodule, ShardedEmbeddingBagCollection)
        for param in submodule.parameters()
    }
    unfused = dict(in_backward_optimizer_filter(model.named_parameters()))
    settings = {"sparse": (sparse, sparse_lr, sparse_eps), "wide": wide or (sparse, sparse_lr / WideLinear.COLUMNS, sparse_eps)}
    optimizers = [("sparse", model.fused_optimizer)]
    for group, (name, lr, eps) in settings.items():
        tables = {key: param for key, param in unfused.items() if tables_of.get(id(param)) == group}
        if tables:
            kwargs = sparse_optimizer_kwargs(name, lr, eps)
            optimizers.append(
                (f"{group}_replicated", KeyedOptimizerWrapper(tables, lambda params, n=name, k=kwargs: SPARSE_OPTIMIZERS[n](params, **k)))
            )
    dense = {key: param for key, param in unfused.items() if id(param) not in tables_of}
    optimizers.append((DENSE, KeyedOptimizerWrapper(dense, lambda params: torch.optim.Adam(params, lr=dense_lr))))
    return CombinedOptimizer(optimizers)

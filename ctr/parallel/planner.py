"""Sharding plans from config, through TorchRec's EmbeddingShardingPlanner, and their summary."""

from typing import Dict, List, Optional

import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    Topology,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ctr.parallel.process_group import DistributedEnv

# Row-wise variants need a reduce-scatter that gloo cannot give TorchRec.
CPU_SHARDING_TYPES = ("table_wise", "column_wise", "table_column_wise", "data_parallel")
ALL_SHARDING_TYPES = tuple(t.value for t in ShardingType if t != ShardingType.GRID_SHARD)


def device_sharding_types(device_type: str) -> List[str]:
    return list(CPU_SHARDING_TYPES if device_type == "cpu" else ALL_SHARDING_TYPES)


def sharding_constraints(
    module: nn.Module, sharding_type: Optional[str], device_type: str
) -> Dict[str, ParameterConstraints]:
    """Per-table constraints: the forced type (or every type the device runs) and its kernel."""
    allowed = device_sharding_types(device_type)
    if sharding_type is not None and sharding_type not in allowed:
        raise ValueError(
            f"sharding.sharding_type={sharding_type!r} cannot run on {device_type}; "
            f"use one of {allowed}" + (" (row-wise sharding needs CUDA)" if "row" in sharding_type else "")
        )
    types = [sharding_type] if sharding_type is not None else allowed
    kernels = [EmbeddingComputeKernel.DENSE.value] if types == ["data_parallel"] else [
        EmbeddingComputeKernel.FUSED.value
    ]
    if "data_parallel" in types and len(types) > 1:
        kernels = [EmbeddingComputeKernel.FUSED.value, EmbeddingComputeKernel.DENSE.value]
    return {
        table.name: ParameterConstraints(sharding_types=types, compute_kernels=kernels)
        for submodule in module.modules()
        if isinstance(submodule, EmbeddingBagCollection)
        for table in submodule.embedding_bag_configs()
    }


def topology(
    world_size: int, local_world_size: int, device_type: str, memory_budget_gb: Optional[float] = None
) -> Topology:
    """The planner's view of the cluster; the budget caps HBM on GPUs, host memory on CPU."""
    budget = None if memory_budget_gb is None else int(memory_budget_gb * 1024**3)
    return TopologyFactory.create_topology(
        TrainerConfig(
            world_size=world_size,
            local_world_size=local_world_size,
            **({"hbm_cap_bytes": budget} if device_type == "cuda" else {"ddr_cap_bytes": budget}),
        ),
        kernel_config=KernelConfig(compute_device=device_type),
    )


def plan_sharding(
    module: nn.Module,
    env: DistributedEnv,
    sharding_type: Optional[str],
    batch_size: int,
    memory_budget_gb: Optional[float] = None,
    storage_reservation: float = 0.15,
) -> ShardingPlan:
    """Plans on rank 0 and shares the plan, so every rank shards identically.

    `storage_reservation` is the fraction of each device's memory kept back for the
    dense tower, activations and the allocator.
    """
    planner = EmbeddingShardingPlanner(
        topology=topology(env.world_size, env.local_world_size, env.device.type, memory_budget_gb),
        batch_size=batch_size,
        constraints=sharding_constraints(module, sharding_type, env.device.type),
        storage_reservation=FixedPercentageStorageReservation(storage_reservation),
    )
    return planner.collective_plan(module, pg=dist.GroupMember.WORLD)


def plan_rows(plan: ShardingPlan) -> List[dict]:
    """One row per table: its shape, sharding type, kernel, ranks and bytes held per rank."""
    rows = []
    for module_path, module_plan in plan.plan.items():
        for table, sharding in module_plan.items():
            bytes_per_rank: Dict[int, int] = {}
            if sharding.sharding_spec is None:
                shape = None
            else:
                shards = sharding.sharding_spec.shards
                shape = [
                    max(s.shard_offsets[0] + s.shard_sizes[0] for s in shards),
                    max(s.shard_offsets[1] + s.shard_sizes[1] for s in shards),
                ]
                for shard in shards:
                    rank = shard.placement.rank()
                    size = shard.shard_sizes[0] * shard.shard_sizes[1] * 4
                    bytes_per_rank[rank] = bytes_per_rank.get(rank, 0) + size
            rows.append(
                {
                    "module": module_path,
                    "table": table,
                    "shape": shape,
                    "sharding_type": sharding.sharding_type,
                    "compute_kernel": sharding.compute_kernel,
                    "ranks": list(sharding.ranks or []),
                    "bytes_per_rank": bytes_per_rank,
                }
            )
    return rows


def format_plan(rows: List[dict]) -> str:
    """A short fixed-width table for the log."""
    header = f"{'table':<16} {'rows x dim':>14} {'sharding':<18} {'kernel':<7} {'ranks':<10} bytes/rank"
    lines = [header, "-" * len(header)]
    for row in rows:
        shape = "x".join(map(str, row["shape"])) if row["shape"] else "replicated"
        per_rank = ", ".join(f"r{r}:{b / 2**20:.1f}MiB" for r, b in sorted(row["bytes_per_rank"].items()))
        ranks = ",".join(map(str, row["ranks"])) or "all"
        lines.append(
            f"{row['table']:<16} {shape:>14} {row['sharding_type']:<18} {row['compute_kernel']:<7} {ranks:<10} {per_rank}"
        )
    return "\n".join(lines)

"""Sharding plans from config, through TorchRec's EmbeddingShardingPlanner.

The config (`sharding.*`) becomes the planner's inputs: a topology (this job's, or one
given for planning a bigger cluster), per-table `ParameterConstraints` (the group's
type, or per-table overrides of type, kernel and column-shard width), the storage
reservation and proposers. Ranks pinned by an override are applied to the chosen plan
before TorchRec turns it into a `ShardingPlan`, so the plan and its estimates agree.
"""

from dataclasses import fields, replace
from typing import Collection, Dict, List, Mapping, Optional, Tuple

import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    PlannerError,
    PlannerErrorType,
    ShardingOption,
    Topology,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import CacheParams, ModuleSharder, QuantizedCommCodecs, ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from ctr.config import ComputeKernel, TableShardingConfig, TableShardingType
from ctr.parallel.comms import warn_substituted_precisions
from ctr.parallel.hardware import GIB, MemoryFacts, memory_facts
from ctr.parallel.plan_summary import PlanEstimates, embedding_tables
from ctr.parallel.process_group import DistributedEnv

# Row-wise variants need a reduce-scatter that gloo cannot give TorchRec.
CPU_SHARDING_TYPES = ("table_wise", "column_wise", "table_column_wise", "data_parallel")
# Kernels that keep table rows in host memory the GPU reads directly (UVM): CUDA only.
UVM_KERNELS = ("fused_uvm", "fused_uvm_caching")
# Types whose shards an override may pin to ranks: one shard (table-wise) or one per column block.
PINNABLE_TYPES = ("table_wise", "column_wise", "table_column_wise")


def sharders(
    qcomm_codecs_registry: Optional[Dict[str, QuantizedCommCodecs]] = None,
) -> List[ModuleSharder[nn.Module]]:
    """The sharders both the planner and DistributedModelParallel use, with the quantized
    comms codecs (`ctr.parallel.comms`) if any."""
    return [EmbeddingBagCollectionSharder(qcomm_codecs_registry=qcomm_codecs_registry)]


def device_sharding_types(device_type: str) -> List[str]:
    return list(CPU_SHARDING_TYPES) if device_type == "cpu" else [str(t) for t in TableShardingType]


def check_sharding_type(key: str, sharding_type: str, device_type: str) -> None:
    """Fails at start-up, naming the config key, for a type this device cannot run."""
    allowed = device_sharding_types(device_type)
    if sharding_type not in allowed:
        raise ValueError(
            f"{key}={sharding_type!r} cannot run on {device_type} (row-wise sharding needs CUDA: gloo has no "
            f"reduce-scatter TorchRec can use); use one of {allowed}, e.g. table_wise or column_wise"
        )


def _check_ranks(
    key: str, table: EmbeddingBagConfig, sharding_type: Optional[str], ranks: List[int], world_size: int
) -> None:
    if sharding_type not in PINNABLE_TYPES:
        raise ValueError(f"{key}.ranks needs {key}.sharding_type (or sharding.sharding_type) in {list(PINNABLE_TYPES)}")
    if not ranks or any(not 0 <= r < world_size for r in ranks):
        raise ValueError(f"{key}.ranks={ranks}: expected ranks in [0, {world_size})")
    if sharding_type == "table_wise" and len(ranks) != 1:
        raise ValueError(f"{key}.ranks={ranks}: a table-wise table lives on exactly one rank")
    if sharding_type != "table_wise":
        width, rest = divmod(table.embedding_dim, len(ranks))
        if rest or width % 4:
            raise ValueError(
                f"{key}.ranks={ranks}: dim {table.embedding_dim} must split into {len(ranks)} column shards "
                "whose width is a multiple of 4"
            )


def table_overrides(sharding: Mapping, tables: Mapping[str, EmbeddingBagConfig]) -> Dict[str, TableShardingConfig]:
    """`sharding.tables`, checked: known tables, known keys, values of the schema's types.

    (`sharding.tables` is untyped in the config, see `TableShardingConfig`, so its entries
    meet their schema here rather than when the config is composed.)
    """
    overrides = sharding.get("tables") or {}
    unknown = sorted(set(overrides) - set(tables))
    if unknown:
        raise KeyError(f"sharding.tables names {unknown}, which are not tables of the model; tables: {sorted(tables)}")
    keys = [f.name for f in fields(TableShardingConfig)]
    parsed = {}
    for name, override in overrides.items():
        override = dict(override or {})
        bad = sorted(set(override) - set(keys))
        if bad:
            raise KeyError(f"sharding.tables.{name}.{bad[0]}: not a table override; expected keys {keys}")
        try:
            parsed[name] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TableShardingConfig), override))
        except ValidationError as error:
            raise ValueError(f"sharding.tables.{name}.{error.key}: {error.msg}") from error
    return parsed


def _forced_data_parallel(key: str, override: TableShardingConfig) -> TableShardingConfig:
    """A table `embedding.update` makes data-parallel with the dense kernel (`ctr.parallel.table_updates`),
    unless its own override asks for something else."""
    for setting, value, wanted in (("sharding_type", override.sharding_type, "data_parallel"),
                                   ("compute_kernel", override.compute_kernel, "dense")):
        if value is not None and value != wanted:
            raise ValueError(
                f"{key}.{setting}={value!r}, but embedding.update makes the table every_k_steps, which runs it "
                f"{wanted} (TorchRec's only unfused kernel, whose gradients can accumulate, is data-parallel's)"
            )
    return replace(override, sharding_type=TableShardingType.data_parallel, compute_kernel=ComputeKernel.dense)


def sharding_constraints(
    module: nn.Module, sharding: Mapping, device_type: str, world_size: int, data_parallel_tables: Collection[str] = (),
) -> Dict[str, ParameterConstraints]:
    """Per-table constraints: the type (forced, overridden, or every type the device runs),
    its kernel (overridden, or the sharder's kernels for that type on this device) and
    the narrowest column shard (pinned ranks fix it at dim / len(ranks)). Tables in
    `data_parallel_tables` are data-parallel with the dense kernel, whatever the group says."""
    tables = {table.name: table for table in embedding_tables(module)}
    overrides = table_overrides(sharding, tables)
    if sharding.get("sharding_type") is not None:
        check_sharding_type("sharding.sharding_type", sharding["sharding_type"], device_type)
    sharder = sharders()[0]
    constraints = {}
    for name, table in tables.items():
        key = f"sharding.tables.{name}"
        override = overrides.get(name, TableShardingConfig())
        if name in data_parallel_tables:
            override = _forced_data_parallel(key, override)
        sharding_type = override.sharding_type or sharding.get("sharding_type")
        if override.sharding_type:
            check_sharding_type(f"{key}.sharding_type", sharding_type, device_type)
        types = [str(sharding_type)] if sharding_type else device_sharding_types(device_type)
        kernels = sorted({k for t in types for k in sharder.compute_kernels(t, device_type) if k in list(ComputeKernel)})
        kernel_key = f"{key}.compute_kernel" if override.compute_kernel else "sharding.compute_kernel"
        kernel = override.compute_kernel or sharding.get("compute_kernel")
        if kernel is not None:
            _check_kernel(kernel_key, kernel, kernels, types, device_type)
            kernels = [str(kernel)]
        min_partition = override.min_partition or sharding.get("min_partition")
        if override.ranks is not None:
            _check_ranks(key, table, sharding_type, list(override.ranks), world_size)
            min_partition = table.embedding_dim // len(override.ranks)
        constraints[name] = ParameterConstraints(
            sharding_types=types, compute_kernels=kernels, min_partition=min_partition,
            cache_params=_cache_params(key, override, sharding, kernels, device_type),
        )
    return constraints


def _check_kernel(key: str, kernel: str, kernels: List[str], types: List[str], device_type: str) -> None:
    if kernel in UVM_KERNELS and device_type != "cuda":
        raise ValueError(
            f"{key}={kernel!r} needs CUDA: UVM keeps the table in host memory that the GPU reads directly "
            f"(FBGEMM has no CPU kernel for it); on {device_type} use one of {kernels}"
        )
    if kernel not in kernels:
        raise ValueError(f"{key}={kernel!r}: {types} on {device_type} runs only {kernels}")


def _cache_params(
    key: str, override: TableShardingConfig, sharding: Mapping, kernels: List[str], device_type: str
) -> Optional[CacheParams]:
    """The UVM cache of a table the planner may give `fused_uvm_caching`: its size as a
    fraction of the table's rows (`cache_load_factor`, per table or for all), and the
    prefetch pipeline that `ctr.train.loop` runs for such tables on CUDA."""
    load_factor, source = override.cache_load_factor, f"{key}.cache_load_factor"
    if load_factor is None:
        load_factor, source = sharding.get("cache_load_factor"), "sharding.cache_load_factor"
    if load_factor is not None and not 0 < load_factor <= 1:
        raise ValueError(f"{source}={load_factor}: expected a fraction of the table's rows in (0, 1]")
    if "fused_uvm_caching" not in kernels:
        return None
    return CacheParams(load_factor=load_factor, prefetch_pipeline=device_type == "cuda")


def uses_uvm_caching(plan: ShardingPlan) -> bool:
    """Whether any table of `plan` runs from a UVM cache (which the prefetch pipeline fills ahead)."""
    return any(
        sharding.compute_kernel == "fused_uvm_caching"
        for module_plan in plan.plan.values()
        for sharding in module_plan.values()
    )


def pin_ranks(pinned: Mapping[str, List[int]]):
    """A planner callback that moves the shards of pinned tables onto their ranks."""

    def callback(best_plan: List[ShardingOption]) -> List[ShardingOption]:
        for option in best_plan:
            ranks = pinned.get(option.name)
            if ranks is None:
                continue
            if len(option.shards) != len(ranks):
                raise PlannerError(
                    f"sharding.tables.{option.name}.ranks={list(ranks)}: the plan cut {len(option.shards)} shards",
                    PlannerErrorType.INVALID_RANK_ASSIGNMENT,
                )
            for shard, rank in zip(option.shards, ranks):
                shard.rank = rank
        return best_plan

    return callback


def topology(
    world_size: int, local_world_size: int, device_type: str, memory: MemoryFacts,
    memory_budget_gb: Optional[float] = None,
) -> Topology:
    """The planner's view of the cluster: HBM and host memory per rank from `memory`; the
    budget, when set, caps HBM on GPUs and host memory on CPU instead."""
    caps = {"hbm_cap_bytes": memory.hbm_bytes, "ddr_cap_bytes": memory.host_bytes}
    if memory_budget_gb is not None:
        caps["hbm_cap_bytes" if device_type == "cuda" else "ddr_cap_bytes"] = int(memory_budget_gb * GIB)
    return TopologyFactory.create_topology(
        TrainerConfig(world_size=world_size, local_world_size=local_world_size, **caps),
        kernel_config=KernelConfig(compute_device=device_type),
    )


def assumed_memory(memory: MemoryFacts, device_type: str, memory_budget_gb: Optional[float]) -> dict:
    """What the planner was told about memory, for plan.json: the facts read, and the budget that overrode one."""
    budget = None if memory_budget_gb is None else {
        "key": "sharding.memory_budget_gb", "gb": memory_budget_gb,
        "caps": "hbm" if device_type == "cuda" else "host",
    }
    return {**memory.as_dict(), "memory_budget": budget}


def build_planner(
    module: nn.Module,
    sharding: Mapping,
    batch_size: int,
    world_size: int,
    local_world_size: int,
    device_type: str,
    memory: MemoryFacts,
    data_parallel_tables: Collection[str] = (),
) -> Tuple[EmbeddingShardingPlanner, PlanEstimates]:
    """TorchRec's planner for `module` per the `sharding` config, on the given cluster with
    `memory` per rank, and the `PlanEstimates` it fills when it plans (its per-rank memory
    and perf estimates, and the memory it assumed). `data_parallel_tables`: see `sharding_constraints`."""
    overrides = table_overrides(sharding, {table.name: table for table in embedding_tables(module)})
    pinned = {name: list(o.ranks) for name, o in overrides.items() if o.ranks is not None}
    budget = sharding.get("memory_budget_gb")
    estimates = PlanEstimates(assumed_memory(memory, device_type, budget))
    proposers = [instantiate(p) for p in sharding.get("proposers") or []]
    planner = EmbeddingShardingPlanner(
        topology=topology(world_size, local_world_size, device_type, memory, budget),
        batch_size=batch_size,
        constraints=sharding_constraints(module, sharding, device_type, world_size, data_parallel_tables),
        storage_reservation=instantiate(sharding["storage_reservation"]),
        proposer=proposers or None,
        stats=[estimates],
        callbacks=[pin_ranks(pinned)],
    )
    return planner, estimates


def _check_topology(sharding: Mapping, env: DistributedEnv) -> None:
    """A configured topology is for planning other clusters; training must match the job's."""
    actual = {"world_size": env.world_size, "local_world_size": env.local_world_size, "compute_device": env.device.type}
    for key, value in (sharding.get("topology") or {}).items():
        if value is not None and value != actual[key]:
            raise ValueError(
                f"sharding.topology.{key}={value!r} but this job has {actual[key]!r}; leave it null to train "
                "(set it only to plan for another cluster with launch/plan.py)"
            )


def plan_sharding(
    module: nn.Module,
    env: DistributedEnv,
    sharding: Mapping,
    batch_size: int,
    qcomm_codecs_registry: Optional[Dict[str, QuantizedCommCodecs]] = None,
    data_parallel_tables: Collection[str] = (),
) -> Tuple[ShardingPlan, PlanEstimates]:
    """Plans on rank 0 and shares the plan, so every rank shards identically.

    The estimates are filled on rank 0 only (where the planner ran). Memory is this
    machine's (`ctr.parallel.hardware`); rank 0 warns of comms precisions TorchRec
    replaces for some of the plan's tables.
    """
    _check_topology(sharding, env)
    memory = memory_facts(env.device.type, env.local_world_size)
    planner, estimates = build_planner(
        module, sharding, batch_size, env.world_size, env.local_world_size, env.device.type, memory,
        data_parallel_tables,
    )
    plan = planner.collective_plan(module, sharders(qcomm_codecs_registry), pg=dist.GroupMember.WORLD)
    if env.is_main:
        warn_substituted_precisions(plan, qcomm_codecs_registry)
    return plan, estimates

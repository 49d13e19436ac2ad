"""A sharding plan for people: a short table for the log and a JSON report for the run dir.

The table rows come from the `ShardingPlan` (which rank holds which part of each table);
the per-rank memory and perf figures are the planner's own estimates, which TorchRec's
planner only logs and `PlanEstimates` keeps.
"""

from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.distributed.planner.types import Perf, Stats, Topology
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingBagConfig, data_type_to_dtype
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ctr.parallel.comms import ALL_TO_ALL, REDUCE_SCATTER

GIB = 1024**3
# Above this many ranks the log shows the spread of the estimates, not one line per rank.
MAX_RANK_LINES = 16


class PlanEstimates(Stats):
    """Keeps the planner's per-rank estimates of the plan it chose (a TorchRec `Stats`).

    `ranks[r]` holds the bytes the planner charged rank r in HBM and host memory (table
    shards, optimizer state, input/output buffers), the rank's capacity, and its estimate
    of one step's embedding work in ms (forward/backward compute and comms).
    Empty until the planner has found a plan. `memory` is what the planner was told each
    rank has (`ctr.parallel.planner.assumed_memory`), known before it plans.
    """

    def __init__(self, memory: Optional[dict] = None) -> None:
        self.ranks: List[dict] = []
        self.planner: Dict[str, object] = {}
        self.memory = memory or {}

    def log(
        self,
        sharding_plan: ShardingPlan,
        topology: Topology,
        batch_size: int,
        storage_reservation: object,
        num_proposals: int,
        num_plans: int,
        run_time: float,
        best_plan: list,
        **_: object,
    ) -> None:
        if not sharding_plan.plan:
            return  # TorchRec calls this on failure too, with an empty plan
        used = [[0, 0] for _ in range(topology.world_size)]
        perf = [Perf(0.0, 0.0, 0.0, 0.0) for _ in range(topology.world_size)]
        for option in best_plan:
            for shard in option.shards:
                used[shard.rank][0] += shard.storage.hbm
                used[shard.rank][1] += shard.storage.ddr
                perf[shard.rank] += shard.perf
        self.ranks = [
            {
                "rank": rank,
                "hbm_bytes": hbm,
                "ddr_bytes": ddr,
                "hbm_capacity_bytes": device.storage.hbm,
                "ddr_capacity_bytes": device.storage.ddr,
                "perf_ms": {
                    "total": p.total, "fwd_compute": p.fwd_compute, "fwd_comms": p.fwd_comms,
                    "bwd_compute": p.bwd_compute, "bwd_comms": p.bwd_comms,
                },
            }
            for rank, ((hbm, ddr), p, device) in enumerate(zip(used, perf, topology.devices))
        ]
        self.planner = {
            "world_size": topology.world_size,
            "local_world_size": topology.local_world_size,
            "compute_device": topology.compute_device,
            "batch_size_per_rank": batch_size,
            "proposals": num_proposals,
            "plans": num_plans,
            "seconds": run_time,
            "slowest_rank_perf_ms": max(p.total for p in perf),
        }


def embedding_tables(module: nn.Module) -> List[EmbeddingBagConfig]:
    return [
        table
        for submodule in module.modules()
        if isinstance(submodule, EmbeddingBagCollection)
        for table in submodule.embedding_bag_configs()
    ]


def element_size(table: EmbeddingBagConfig) -> int:
    return torch.empty((), dtype=data_type_to_dtype(table.data_type)).element_size()


def plan_rows(plan: ShardingPlan, module: nn.Module) -> List[dict]:
    """One row per table: its shape, sharding type, kernel, ranks and weight bytes per rank."""
    tables = {table.name: table for table in embedding_tables(module)}
    rows = []
    for module_path, module_plan in plan.plan.items():
        for name, sharding in module_plan.items():
            table = tables[name]
            item = element_size(table)
            ranks = list(sharding.ranks or [])
            if sharding.sharding_spec is None:  # data-parallel: the whole table on every rank
                shards = [(rank, table.num_embeddings * table.embedding_dim) for rank in ranks]
            else:
                shards = [
                    (s.placement.rank(), s.shard_sizes[0] * s.shard_sizes[1]) for s in sharding.sharding_spec.shards
                ]
            bytes_per_rank: Dict[int, int] = {}
            for rank, numel in shards:
                bytes_per_rank[rank] = bytes_per_rank.get(rank, 0) + numel * item
            rows.append(
                {
                    "module": module_path,
                    "table": name,
                    "shape": [table.num_embeddings, table.embedding_dim],
                    "sharding_type": sharding.sharding_type,
                    "compute_kernel": sharding.compute_kernel,
                    "ranks": ranks,
                    "element_bytes": item,
                    "bytes_per_rank": bytes_per_rank,
                }
            )
    return rows


def bytes_per_rank(rows: List[dict]) -> Dict[int, int]:
    """Table weight bytes each rank holds, over all tables (optimizer state not included)."""
    total: Dict[int, int] = {}
    for row in rows:
        for rank, size in row["bytes_per_rank"].items():
            total[int(rank)] = total.get(int(rank), 0) + size
    return dict(sorted(total.items()))


def _values_sent(row: dict, columns: int, batch_size: int, world_size: int, local_world_size: int) -> Dict[str, int]:
    """Values one shard of `columns` columns sends per step on each collective it uses."""
    sharding_type = row["sharding_type"]
    if sharding_type == "row_wise":  # partial sums of every rank's rows, all columns
        return {REDUCE_SCATTER: (world_size - 1) * batch_size * columns}
    if sharding_type == "table_row_wise":  # within the node, then its share across nodes
        local = local_world_size
        return {
            REDUCE_SCATTER: (local - 1) * world_size * batch_size * columns // local,
            ALL_TO_ALL: (world_size - 1) * batch_size * columns // local,
        }
    return {ALL_TO_ALL: (world_size - 1) * batch_size * columns}


def pooled_comms_bytes(
    rows: List[dict], batch_size: int, world_size: int, local_world_size: int, wire: Dict[str, Dict[str, int]]
) -> Dict[str, object]:
    """Bytes all ranks together send per step for the tables' outputs, by the plan, in total
    and per sharding type.

    Forward: each shard's pooled values for the other ranks' `batch_size` rows; backward:
    their gradients. Column and table shards all-to-all their columns; row shards
    reduce-scatter partial sums of all columns (table-row-wise: within the node, then an
    all-to-all of the node's share across nodes). `wire` gives the bytes per value each
    collective really sends (`ctr.parallel.comms.wire_bytes`: TorchRec may send another
    precision than configured). Data-parallel tables instead all-reduce their whole
    gradient in fp32 (a ring sends 2(W-1)/W of it per rank). Ids are not counted.
    """
    by_type: Dict[str, Dict[str, int]] = {}
    for row in rows:
        num_rows, dim = row["shape"]
        sent = by_type.setdefault(row["sharding_type"], {"forward": 0, "backward": 0})
        for size in row["bytes_per_rank"].values():
            if row["sharding_type"] == "data_parallel":
                sent["backward"] += 2 * (world_size - 1) * size // world_size
                continue
            row_wise = row["sharding_type"] in ("row_wise", "table_row_wise")
            columns = dim if row_wise else size // (num_rows * row["element_bytes"])
            for op, values in _values_sent(row, columns, batch_size, world_size, local_world_size).items():
                for direction in ("forward", "backward"):
                    sent[direction] += values * wire[op][direction]
    return {
        "forward": sum(t["forward"] for t in by_type.values()),
        "backward": sum(t["backward"] for t in by_type.values()),
        "by_sharding_type": by_type,
    }


def _bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n / 1024:.1f}KiB"


def _ranks(ranks: List[int]) -> str:
    """0,1,2,3 → 0-3: a 64-rank table should not take a screen."""
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def format_plan(rows: List[dict]) -> str:
    """A short fixed-width table for the log."""
    header = f"{'table':<16} {'rows x dim':>14} {'sharding':<18} {'kernel':<17} {'ranks':<10} bytes/rank"
    lines = [header, "-" * len(header)]
    for row in rows:
        sizes = set(row["bytes_per_rank"].values())
        per_rank = _bytes(max(sizes)) if len(sizes) == 1 else f"up to {_bytes(max(sizes))}"
        lines.append(
            f"{row['table']:<16} {'x'.join(map(str, row['shape'])):>14} {row['sharding_type']:<18} "
            f"{row['compute_kernel']:<17} {_ranks(row['ranks']):<10} {per_rank}"
        )
    return "\n".join(lines)


def format_estimates(estimates: PlanEstimates) -> str:
    """The planner's per-rank memory and step-time estimates (a spread when there are many ranks)."""
    if not estimates.ranks:
        return "planner estimates: none (the planner ran on another rank)"
    memory = "hbm" if estimates.planner["compute_device"] == "cuda" else "ddr"

    def line(r: dict) -> str:
        p = r["perf_ms"]
        host = f", ddr {_bytes(r['ddr_bytes'])} of {_bytes(r['ddr_capacity_bytes'])}" if memory == "hbm" else ""
        return (
            f"rank {r['rank']:>3}: {memory} {_bytes(r[f'{memory}_bytes']):>10} "
            f"of {_bytes(r[f'{memory}_capacity_bytes'])}{host}  step {p['total']:.3f} ms (fwd {p['fwd_compute']:.3f}+{p['fwd_comms']:.3f} comms,"
            f" bwd {p['bwd_compute']:.3f}+{p['bwd_comms']:.3f} comms)"
        )

    ranks = estimates.ranks
    by_memory = sorted(ranks, key=lambda r: r[f"{memory}_bytes"])
    shown = ranks if len(ranks) <= MAX_RANK_LINES else [by_memory[0], by_memory[len(ranks) // 2], by_memory[-1]]
    head = (
        f"planner estimates per rank ({len(ranks)} ranks"
        + ("" if shown is ranks else "; least, median and most memory shown")
        + f"), embedding step of the slowest rank {estimates.planner['slowest_rank_perf_ms']:.3f} ms:"
    )
    return "\n".join([head, *map(line, shown), *_memory_lines(estimates.memory)])


def _memory_lines(memory: dict) -> List[str]:
    """Where the capacities came from: read from this machine, TorchRec's defaults, or the budget."""
    if not memory:
        return []
    budget = memory["memory_budget"]
    lines = [
        f"capacity per rank: hbm {_bytes(memory['hbm_bytes'])} ({memory['hbm_source']}), "
        f"ddr {_bytes(memory['host_bytes'])} ({memory['host_source']})"
    ]
    if budget is not None:
        lines.append(f"  {budget['caps']} capped by {budget['key']}={budget['gb']:g}")
    return lines


def plan_report(plan: ShardingPlan, rows: List[dict], estimates: PlanEstimates) -> dict:
    """The JSON written beside a run: table rows, the planner's estimates, TorchRec's plan."""
    return {
        "tables": rows, "ranks": estimates.ranks, "planner": estimates.planner,
        "memory_assumed": estimates.memory, "plan": str(plan),
    }

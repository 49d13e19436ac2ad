"""A job's sharding plan without training: for clusters bigger than the machine at hand.

The model is built on the meta device, so no table memory is allocated however large the
tables, and the planner runs in this one process for the topology in
`sharding.topology` (null fields: the job `launch/train.py` would start here).
"""

from dataclasses import dataclass
from typing import Tuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchrec.distributed.planner.types import PlannerError, PlannerErrorType

from ctr.build import build_task, mark_table_optimizers, table_names, update_settings
from ctr.parallel.hardware import memory_facts
from ctr.parallel.plan_summary import (
    GIB, element_size, embedding_tables, format_estimates, format_plan, plan_report, plan_rows,
)
from ctr.parallel.planner import build_planner, sharders
from ctr.parallel.table_updates import forced_data_parallel


@dataclass
class JobPlan:
    """What `launch/plan.py` prints (`text`) and writes (`report`, as plan.json)."""

    fits: bool
    text: str
    report: dict


def cluster(cfg: DictConfig) -> Tuple[int, int, str]:
    """(world size, ranks per node, device type) to plan for: configured, else this machine's job."""
    topology = cfg.sharding.topology
    world_size = topology.world_size or cfg.distributed.nproc_per_node
    local_world_size = topology.local_world_size or world_size
    device = topology.compute_device or ("cuda" if torch.cuda.is_available() else "cpu")
    if world_size % local_world_size:
        raise ValueError(
            f"sharding.topology.world_size={world_size} is not a whole number of nodes of "
            f"sharding.topology.local_world_size={local_world_size} ranks"
        )
    return world_size, local_world_size, device


def plan_job(cfg: DictConfig) -> JobPlan:
    """Plans `cfg`'s model on its cluster; `fits` is False (and `text` says why) when no plan exists."""
    world_size, local_world_size, device = cluster(cfg)
    task = build_task(cfg, instantiate(cfg.data), torch.device("meta"))
    updates = update_settings(table_names(task), cfg)
    mark_table_optimizers(task, cfg.optimizer, torch.device(device), updates)
    tables = embedding_tables(task)
    weights = sum(t.num_embeddings * t.embedding_dim * element_size(t) for t in tables)
    budget = cfg.sharding.memory_budget_gb
    header = (
        f"cluster: {world_size // local_world_size} node(s) x {local_world_size} {device} rank(s) "
        f"= {world_size} ranks, "
        f"memory budget {'default' if budget is None else f'{budget:g} GB'} per rank, "
        f"batch {cfg.trainer.batch_size} per rank\n"
        f"model: {len(tables)} tables, {sum(t.num_embeddings for t in tables):,} rows, "
        f"{weights / GIB:.1f} GiB of weights (before optimizer state)"
    )
    # This machine's memory where it is the cluster planned for; TorchRec's defaults elsewhere.
    on_this_machine = cfg.sharding.topology.world_size in (None, cfg.distributed.nproc_per_node)
    memory = memory_facts(device, local_world_size, on_this_machine)
    planner, estimates = build_planner(
        task, cfg.sharding, cfg.trainer.batch_size, world_size, local_world_size, device, memory,
        forced_data_parallel(updates),
    )
    try:
        plan = planner.plan(task, sharders())
    except PlannerError as error:
        verdict = (
            "DOES NOT FIT: the tables need more memory than these ranks have"
            if error.error_type == PlannerErrorType.INSUFFICIENT_STORAGE
            else "NO PLAN: no placement satisfies the sharding constraints"
        )
        report = {"fits": False, "verdict": verdict, "error": str(error)}
        return JobPlan(False, f"{header}\n\n{verdict}\n{error}", report)
    rows = plan_rows(plan, task)
    text = f"{header}\n\n{format_plan(rows)}\n\n{format_estimates(estimates)}\n\nFITS: a plan exists for this cluster"
    return JobPlan(True, text, {"fits": True, **plan_report(plan, rows, estimates)})

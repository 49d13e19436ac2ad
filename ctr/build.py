"""Model assembly: a config → the model, sharded by the planner's plan, with its optimizers.

Every entry point that needs a model builds it here (training, export, planning, the
benchmarks, the tests). The order of the steps matters and is written once, in `shard`:
the table optimizers are marked before planning (the planner and DistributedModelParallel
read the marks to pick FBGEMM's fused kernels), and the plan's rows are read from the
unsharded tables, before sharding replaces them.
"""

import math
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer

from ctr.config import TableUpdate
from ctr.features.crossing import CrossedHashing, parse_crosses
from ctr.features.embeddings import FeatureEmbeddings
from ctr.features.hashing import FeatureHashing, build_hashing
from ctr.features.tables import embedding_bag_configs, feature_dims, per_table_setting
from ctr.models.task import ClickTask
from ctr.parallel.comms import qcomm_codecs
from ctr.parallel.hardware import check_dense_precision
from ctr.parallel.model_parallel import distribute
from ctr.parallel.optimizers import TableGroups, TableOptimizer, apply_table_optimizers, combined_optimizer
from ctr.parallel.plan_summary import embedding_tables, plan_rows
from ctr.parallel.planner import plan_sharding
from ctr.parallel.process_group import DistributedEnv
from ctr.parallel.table_updates import UPDATE_KEY, forced_data_parallel, table_updates


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_input_hashing(cfg: DictConfig, source) -> FeatureHashing:
    """The batch transform of the data path: `embedding.hashing` over the data's features,
    plus the crossed features the model reads (`model.wide.crosses`), if any."""
    hashing = build_hashing(cfg.embedding, source)
    crosses = parse_crosses(OmegaConf.select(cfg, "model.wide.crosses", default=None) or [], source.sparse_names)
    return CrossedHashing(hashing, crosses) if crosses else hashing


def build_task(cfg: DictConfig, source, device: torch.device, hashing: Optional[FeatureHashing] = None) -> ClickTask:
    """The unsharded model; its tables on `device` (meta: allocated later, shard by shard).

    `hashing` (`build_input_hashing` when not given) decides each feature's tables.
    """
    embedding = cfg.embedding
    hashing = hashing or build_input_hashing(cfg, source)
    shared = getattr(source, "shared_tables", {})
    table_rows = hashing.table_rows()
    rule = embedding.dim_rule
    dims = feature_dims(
        {feature: math.prod(parts.values()) for feature, parts in table_rows.items()},
        embedding.dim, embedding.dim_per_feature, rule.k, rule.min, rule.max,
    )
    pooling = per_table_setting(source.sparse_names, embedding.pooling, embedding.pooling_per_feature, shared,
                                "embedding.pooling_per_feature")
    tables = embedding_bag_configs(table_rows, dims, embedding.precision, shared, pooling)
    ebc = EmbeddingBagCollection(tables=tables, device=device)
    embeddings = FeatureEmbeddings(ebc, {feature: list(parts) for feature, parts in table_rows.items()}, hashing.combine)
    model = instantiate(cfg.model, embeddings=embeddings, num_dense_features=len(source.dense_names))
    # Runs saved before `trainer.dense_precision` existed were fp32.
    return ClickTask(model, OmegaConf.select(cfg, "trainer.dense_precision", default="fp32"))


def parameter_counts(task: ClickTask) -> Dict[str, int]:
    """Parameters per part of the model (its direct submodules: tables, towers), meta or not."""
    return {name: sum(p.numel() for p in part.parameters()) for name, part in task.model.named_children()}


def table_optimizers(task: ClickTask, opt: Mapping) -> TableGroups:
    """The model's table groups, each with its optimizer from `optimizer` (`opt`): the group's
    own settings key (its null fields: the sparse optimizer's), times its learning-rate and
    weight-decay scales."""
    groups = {}
    for group, tables in task.table_groups().items():
        own = (opt.get(tables.settings) or {}) if tables.settings else {}
        optimizer = TableOptimizer(
            name=own.get("name") or opt.sparse,
            lr=(opt.sparse_lr if own.get("lr") is None else own.get("lr")) * tables.lr_scale,
            eps=opt.sparse_eps if own.get("eps") is None else own.get("eps"),
            setting=f"optimizer.{tables.settings}.name" if own.get("name") else "optimizer.sparse",
            weight_decay=(opt.get("sparse_weight_decay", 0.0) if own.get("weight_decay") is None
                          else own.get("weight_decay")) * tables.weight_decay_scale,
            weight_decay_setting=f"optimizer.{tables.settings}.weight_decay" if own.get("weight_decay") is not None
            else "optimizer.sparse_weight_decay",
        )
        groups[group] = (tables.collections, optimizer)
    return groups


def update_settings(tables: Sequence[str], cfg: DictConfig) -> Dict[str, TableUpdate]:
    """`embedding.update` (frozen and every_k_steps tables), checked against the model's `tables`."""
    embedding = cfg.embedding
    return table_updates(embedding.get(UPDATE_KEY) or {}, embedding.get("update_every_k"), tables)


def table_names(task: ClickTask) -> List[str]:
    """The names of an unsharded model's tables."""
    return [table.name for table in embedding_tables(task)]


def mark_table_optimizers(
    task: ClickTask, opt: Mapping, device: torch.device, updates: Mapping[str, TableUpdate] = {}
) -> None:
    """Marks every table for its group's fused optimizer (`updates`: the frozen and every_k_steps
    tables, `update_settings`); a table in no group is an error (the dense Adam would train it)."""
    groups = table_optimizers(task, opt)
    grouped = {id(module) for modules, _ in groups.values() for module in modules}
    orphans = [name for name, module in task.named_modules()
               if isinstance(module, EmbeddingBagCollection) and id(module) not in grouped]
    if orphans:
        raise ValueError(
            f"{type(task.model).__name__}.table_groups() leaves out the embedding collections {orphans}: "
            "every collection needs a group, or it would train with the dense optimizer"
        )
    apply_table_optimizers(groups, device, updates)


@dataclass
class Sharded:
    """A model sharded across the ranks, and the plan that placed its tables."""

    model: DistributedModelParallel
    plan: ShardingPlan
    rows: List[dict]  # the plan, one row per table (`plan_rows`)
    estimates: Any  # the planner's per-rank estimates


def shard(task: ClickTask, env: DistributedEnv, cfg: DictConfig) -> Sharded:
    """Marks the table optimizers, plans, reads the plan's rows, then shards `task` (in this order)."""
    codecs = qcomm_codecs(cfg.comms, env.device)
    updates = update_settings(table_names(task), cfg)
    mark_table_optimizers(task, cfg.optimizer, env.device, updates)
    plan, estimates = plan_sharding(task, env, cfg.sharding, cfg.trainer.batch_size, codecs,
                                    forced_data_parallel(updates))
    rows = plan_rows(plan, task)
    return Sharded(distribute(task, env, plan, codecs), plan, rows, estimates)


def optimizers(model: DistributedModelParallel, cfg: DictConfig) -> CombinedOptimizer:
    """The sharded model's optimizers: its tables' (grouped as its model names them, frozen or
    every k steps as `embedding.update` says), Adam for the rest."""
    opt = cfg.optimizer
    tables = [table for module_plan in model.plan.plan.values() for table in module_plan]
    return combined_optimizer(model, table_optimizers(model.module, opt), opt.dense_lr,
                              opt.get("dense_weight_decay", 0.0), update_settings(tables, cfg),
                              cfg.embedding.update_every_k)


@dataclass
class Trainable:
    """A sharded model ready to train: what every training entry point builds from a config."""

    source: Any
    hashing: FeatureHashing
    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    plan: ShardingPlan
    rows: List[dict]  # the plan, one row per table (`plan_rows`)
    estimates: Any  # the planner's per-rank estimates
    parameters: Dict[str, int]  # per part of the model (`parameter_counts`)
    tables: List[EmbeddingBagConfig]  # every table's config (name, features, shape), as before sharding


def build_trainable(cfg: DictConfig, env: DistributedEnv) -> Trainable:
    """Data source, hashing, the model sharded by the planner's plan, and its optimizers."""
    check_dense_precision(cfg.trainer.dense_precision, env.device)
    source = instantiate(cfg.data)
    hashing = build_input_hashing(cfg, source)
    task = build_task(cfg, source, torch.device("meta"), hashing)
    parameters = parameter_counts(task)
    tables = embedding_tables(task)
    sharded = shard(task, env, cfg)
    optimizer = optimizers(sharded.model, cfg)
    return Trainable(source, hashing, sharded.model, optimizer, sharded.plan, sharded.rows, sharded.estimates,
                     parameters, tables)


"""One training job, end to end: data → features → model → sharding → train → evaluate.

`run` is the job function every launcher calls (torchrun workers, the self-launching
`launch/train.py`), so there is one code path for all of them.
"""

import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer

from ctr.atomic import write_json_atomic
from ctr.data.reader import batches, num_steps, prefetch
from ctr.features.crossing import CrossedHashing, parse_crosses
from ctr.features.embeddings import FeatureEmbeddings
from ctr.features.hashing import FeatureHashing, build_hashing, per_table_setting
from ctr.features.tables import embedding_bag_configs, feature_dims
from ctr.parallel.comms import WIRE_BYTES, qcomm_codecs
from ctr.parallel.model_parallel import distribute
from ctr.parallel.optimizers import apply_table_optimizers, combined_optimizer, fused_state_bytes, wide_optimizer
from ctr.parallel.plan_summary import (
    bytes_per_rank, format_estimates, format_plan, plan_report, plan_rows, pooled_comms_bytes,
)
from ctr.parallel.planner import plan_sharding
from ctr.parallel.process_group import DistributedEnv, in_process_group
from ctr.train.console import configure_worker_logging, quiet_library_noise
from ctr.train.evaluate import evaluate
from ctr.train.guards import check_config, check_steps
from ctr.train.checkpoint import BEST, Checkpointer, best_value, checkpoint_directory, latest
from ctr.train.loop import Hooks, is_due, train
from ctr.train.scalars import Scalars, peak_memory_per_rank, per_rank
from ctr.train.schedule import build_scheduler
from ctr.train.validation import Validation
from ctr.train.task import ClickTask

log = logging.getLogger(__name__)

JOB_START_ENV = "CTR_JOB_START"


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


def build_trainable(cfg: DictConfig, env: DistributedEnv) -> Trainable:
    """Data source, hashing, the model sharded by the planner's plan, and its optimizers."""
    source = instantiate(cfg.data)
    codecs = qcomm_codecs(cfg.comms, env.device)
    hashing = build_input_hashing(cfg, source)
    task = build_task(cfg, source, torch.device("meta"), hashing)
    parameters = parameter_counts(task)
    opt = cfg.optimizer
    apply_table_optimizers(task, opt, env.device)
    plan, estimates = plan_sharding(task, env, cfg.sharding, cfg.trainer.batch_size, codecs)
    rows = plan_rows(plan, task)  # before sharding replaces the tables
    model = distribute(task, env, plan, codecs)
    optimizer = combined_optimizer(model, opt.sparse, opt.sparse_lr, opt.sparse_eps, opt.dense_lr, wide_optimizer(opt))
    return Trainable(source, hashing, model, optimizer, plan, rows, estimates, parameters)


def parameter_counts(task: ClickTask) -> Dict[str, int]:
    """Parameters per part of the model (its direct submodules: tables, towers), meta or not."""
    return {name: sum(p.numel() for p in part.parameters()) for name, part in task.model.named_children()}


def run(cfg: DictConfig, run_dir: Path) -> Dict[str, float]:
    """Trains and evaluates per `cfg`, writing the plan and metrics into `run_dir` (rank 0)."""
    # ctr's launcher stamps the job's start; under torchrun the rank's own start stands in.
    job_start = float(os.environ.get(JOB_START_ENV, time.time()))
    check_config(cfg)
    quiet_library_noise()
    return in_process_group(lambda env: _run(cfg, run_dir, env, job_start), cfg.distributed.backend)


def run_worker(cfg_container: dict, run_dir: str) -> Dict[str, float]:
    """Entry of a rank started by `ctr.parallel.launcher` (a plain dict crosses the process boundary)."""
    configure_worker_logging(Path(run_dir), int(os.environ["RANK"]))
    return run(OmegaConf.create(cfg_container), Path(run_dir))


def _run(cfg: DictConfig, run_dir: Path, env: DistributedEnv, job_start: float) -> Dict[str, float]:
    seed_everything(cfg.distributed.seed)
    if env.is_main:
        log.info("rank 0 of %d, backend %s, device %s, run dir %s", env.world_size, env.backend, env.device, run_dir)
    built = build_trainable(cfg, env)
    source, hashing, model, optimizer, rows = built.source, built.hashing, built.model, built.optimizer, built.rows
    if env.is_main:
        log.info("parameters: %s", ", ".join(f"{part} {count:,}" for part, count in built.parameters.items()))
        log.info("sharding plan:\n%s\n%s", format_plan(rows), format_estimates(built.estimates))
        write_json_atomic(run_dir / "plan.json", plan_report(built.plan, rows, built.estimates))
    opt = cfg.optimizer

    trainer = cfg.trainer
    steps_per_epoch = num_steps(source.num_rows("train"), trainer.batch_size, env.world_size, drop_last=True)
    total_steps = steps_per_epoch * trainer.epochs
    scheduler = build_scheduler(optimizer, opt.sparse_schedule, opt.dense_schedule, total_steps)

    ckpt = cfg.checkpoint
    checkpointer = Checkpointer(checkpoint_directory(ckpt.dir, run_dir), ckpt.keep_last)
    start_step = 0
    resume_from = _resume_path(ckpt.resume, checkpointer.directory)
    check_steps(steps_per_epoch, source.num_rows("train"), trainer.batch_size, env.world_size, trainer.max_steps,
                resume_from is not None)
    if resume_from is not None:
        start_step = checkpointer.load(resume_from, model, optimizer, scheduler, weights_only=ckpt.weights_only)

    scalars = Scalars(run_dir / "tensorboard", enabled=env.is_main and trainer.tensorboard)

    def evaluate_split(split: str) -> Dict[str, float]:
        return evaluate(model, source, split, hashing, env, trainer.eval_batch_size)

    def save_best(step: int, metrics: Dict[str, float]) -> None:
        checkpointer.save(step, model, optimizer, scheduler, name=BEST, info={"metric": trainer.best_metric, "value": metrics[trainer.best_metric]})

    has_val = source.num_rows("val") > 0
    validation = Validation(
        lambda: evaluate_split("val"), trainer.best_metric, trainer.early_stopping_patience,
        save_best if ckpt.keep_best else None, scalars, env.is_main, best=best_value(checkpointer.directory),
    )
    hooks = Hooks(
        eval_every_steps=trainer.eval_every_steps if has_val else None,
        on_eval=validation,
        checkpoint_every_steps=ckpt.every_steps,
        on_checkpoint=lambda step: checkpointer.save(step, model, optimizer, scheduler),
    )
    result = train(
        model,
        optimizer,
        prefetch(_train_batches(source, hashing, cfg, env, start_step, steps_per_epoch)),
        env,
        num_steps=total_steps,
        log_every_steps=trainer.log_every_steps,
        progress_bar=trainer.progress_bar,
        max_steps=trainer.max_steps,
        start_step=start_step,
        scheduler=scheduler,
        hooks=hooks,
        scalars=scalars,
    )
    if result.steps > start_step and not is_due(result.steps, ckpt.every_steps):
        checkpointer.save(result.steps, model, optimizer, scheduler)
    if has_val and not (result.stopped_early or is_due(result.steps, hooks.eval_every_steps)):
        validation(result.steps)
    metrics = evaluate_split("test")
    memory = peak_memory_per_rank(env.device)
    state_bytes = per_rank(fused_state_bytes(model), env.device)
    summary = {
        **{f"test_{k}": v for k, v in metrics.items()},
        **{f"val_{k}": v for k, v in validation.last.items()},
        "best_val_" + trainer.best_metric: validation.best,
        "embedding_bytes": sum(sum(row["bytes_per_rank"].values()) for row in rows),
        "embedding_bytes_per_rank": bytes_per_rank(rows),
        "optimizer_state_bytes": sum(state_bytes),
        "optimizer_state_bytes_per_rank": dict(enumerate(state_bytes)),
        "comms_bytes_per_step": pooled_comms_bytes(
            rows, trainer.batch_size, env.world_size,
            WIRE_BYTES[cfg.comms.forward_precision], WIRE_BYTES[cfg.comms.backward_precision],
        ),
        "train_steps": result.steps,
        "resumed_from_step": start_step,
        "stopped_early": result.stopped_early,
        "train_samples": result.samples,
        "train_seconds": result.seconds,
        "train_samples_per_second": result.samples_per_second,
        "seconds_to_first_step": result.first_step_finished_at - job_start if result.losses else None,
        "peak_memory_bytes_per_rank": memory,
        "world_size": env.world_size,
        "parameters": built.parameters,
    }
    scalars.add({f"test/{k}": v for k, v in metrics.items()}, result.steps)
    scalars.close()
    if env.is_main:
        teacher = f" (teacher {metrics['teacher_auc']:.4f})" if "teacher_auc" in metrics else ""
        log.info(
            "test AUC %.4f%s  log-loss %.4f  NE %.4f  calibration %.3f  |  %d steps, %.0f samples/s",
            metrics["auc"], teacher, metrics["log_loss"],
            metrics["normalized_entropy"], metrics["calibration"], result.steps, result.samples_per_second,
        )
        write_json_atomic(run_dir / "metrics.json", summary)
    return summary


def _resume_path(resume: str, directory: Path) -> Optional[Path]:
    """`checkpoint.resume`: auto (latest complete checkpoint in `directory`, if any), none, or a path."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest(directory)
    return Path(resume)


def _train_batches(source, hashing, cfg: DictConfig, env: DistributedEnv, start_step: int, steps_per_epoch: int):
    """Training batches from global step `start_step` on, across epochs."""
    trainer = cfg.trainer
    first_epoch, offset = divmod(start_step, steps_per_epoch) if steps_per_epoch else (0, 0)
    for epoch in range(first_epoch, trainer.epochs):
        skip = offset if epoch == first_epoch else 0
        for batch in batches(source, "train", trainer.batch_size, env.rank, env.world_size, True, start_step=skip):
            batch = hashing(batch)
            # Page-locked host memory lets the pipeline's copy to the GPU run asynchronously.
            yield batch.pin_memory() if env.device.type == "cuda" else batch

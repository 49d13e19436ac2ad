"""One training job, end to end: data → features → model → sharding → train → evaluate.

`run` is the job function every launcher calls (torchrun workers, the self-launching
`launch/train.py`), so there is one code path for all of them.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ctr.atomic import write_json_atomic
from ctr.build import Trainable, build_trainable, seed_everything
from ctr.config import EvalEvery
from ctr.data.reader import TrainBatches, train_batches, train_steps_per_epoch
from ctr.data.shards import ShardSource
from ctr.parallel.comms import wire_bytes
from ctr.parallel.optimizers import fused_state_bytes
from ctr.parallel.plan_summary import bytes_per_rank, format_estimates, format_plan, plan_report, pooled_comms_bytes
from ctr.parallel.process_group import DistributedEnv, in_process_group
from ctr.train.checkpoint import (
    BEST,
    Checkpointer,
    best_record,
    best_value,
    checkpoint_directory,
    record,
    training_config,
)
from ctr.train.console import configure_worker_logging, quiet_library_noise
from ctr.train.evaluate import evaluate
from ctr.train.guards import check_config, check_steps
from ctr.train.loop import Hooks, TrainResult, train
from ctr.train.metrics import auc_bins_setting
from ctr.train.scalars import Scalars, peak_memory_per_rank, per_rank
from ctr.train.schedule import build_scheduler
from ctr.train.table_init import initialise_tables
from ctr.train.validation import Validation

log = logging.getLogger(__name__)

JOB_START_ENV = "CTR_JOB_START"
# The key of a step checkpoint's record that carries the validations without improvement so far.
PATIENCE_KEY = "evaluations_without_improvement"
# Fewer steps than this per epoch: the start-up log says so (the batch suits bigger data).
FEW_STEPS_PER_EPOCH = 50


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
    built = _build(cfg, run_dir, env)
    initialised_rows = initialise_tables(cfg, built, env)
    fitted = _fit(cfg, built, run_dir, env)
    return _report(cfg, built, fitted, run_dir, env, job_start, initialised_rows)


def _build(cfg: DictConfig, run_dir: Path, env: DistributedEnv) -> Trainable:
    """Seeds, builds the sharded model and writes its plan (plan.json)."""
    seed_everything(cfg.distributed.seed)
    if env.is_main:
        log.info("rank 0 of %d, backend %s, device %s, run dir %s", env.world_size, env.backend, env.device, run_dir)
    built = build_trainable(cfg, env)
    if env.is_main:
        log.info("parameters: %s", ", ".join(f"{part} {count:,}" for part, count in built.parameters.items()))
        log.info("sharding plan:\n%s\n%s", format_plan(built.rows), format_estimates(built.estimates))
        write_json_atomic(run_dir / "plan.json", plan_report(built.plan, built.rows, built.estimates))
    return built


@dataclass
class Fitted:
    """What training left for the report."""

    result: TrainResult
    start_step: int  # the step training resumed from (0: a fresh start)
    validation: Validation
    scalars: Scalars
    checkpoint_dir: Path
    epochs: int  # the epochs planned (`trainer.epochs`, or as `planned_epochs` resolves null)
    test_weights: str  # "best": the best checkpoint's, restored after training; "last": the last step's
    test_weights_step: int  # the step the test weights come from


def _fit(cfg: DictConfig, built: Trainable, run_dir: Path, env: DistributedEnv) -> Fitted:
    """Trains from the checkpoint to resume from (if any), validating and checkpointing as configured."""
    opt, trainer, ckpt = cfg.optimizer, cfg.trainer, cfg.checkpoint
    model, optimizer, source = built.model, built.optimizer, built.source
    steps_per_epoch = train_steps_per_epoch(source.num_rows("train"), trainer.batch_size, env.world_size)
    has_validation = source.num_rows("val") > 0
    epochs = planned_epochs(trainer, has_validation)
    total_steps = steps_per_epoch * epochs
    eval_every_steps = _eval_every_steps(trainer, steps_per_epoch, converging=trainer.epochs is None and has_validation)
    if env.is_main:
        _log_data_size(source, trainer.batch_size, env.world_size, steps_per_epoch)
        _log_duration(trainer, epochs, has_validation, eval_every_steps, ckpt.keep_best, source.max_epochs)
    scheduler = build_scheduler(optimizer, opt.sparse_schedule, opt.dense_schedule, total_steps)

    checkpointer = Checkpointer(checkpoint_directory(ckpt.dir, run_dir), ckpt.keep_last, env.device, training_config(cfg))
    start_step = 0
    resume_from = checkpointer.resume_point(ckpt.resume, ckpt.allow_config_change)
    check_steps(steps_per_epoch, source.num_rows("train"), trainer.batch_size, env.world_size, trainer.max_steps,
                resume_from is not None)
    if resume_from is not None:
        start_step = checkpointer.load(resume_from, model, optimizer, scheduler, weights_only=ckpt.weights_only)

    scalars = Scalars(run_dir / "tensorboard", enabled=env.is_main and trainer.tensorboard)

    auc_bins = auc_bins_setting(trainer.auc, trainer.auc_bins)

    def save_best(step: int, metrics: Dict[str, float]) -> None:
        checkpointer.save(step, model, optimizer, scheduler, name=BEST, info={"metric": trainer.best_metric, "value": metrics[trainer.best_metric]})

    resumed = resume_from is not None
    carried = record(resume_from).get(PATIENCE_KEY, 0) if resumed and not ckpt.weights_only else 0
    validation = Validation(
        lambda: evaluate(model, source, "val", built.hashing, env, trainer.eval_batch_size, auc_bins),
        trainer.best_metric, trainer.early_stopping_patience,
        save_best if ckpt.keep_best else None, scalars, env.is_main, best=best_value(checkpointer.directory),
        evaluations_without_improvement=carried,
    )
    hooks = Hooks(
        eval_every_steps=eval_every_steps,
        on_eval=validation if has_validation else None,
        checkpoint_every_steps=ckpt.every_steps,
        on_checkpoint=lambda step: checkpointer.save(
            step, model, optimizer, scheduler, info={PATIENCE_KEY: validation.evaluations_without_improvement}),
    )
    if validation.exhausted and env.is_main:
        log.info("the run resumed had stopped early: no further training")
    result = train(
        model,
        optimizer,
        _train_batches(source, built.hashing, cfg, env, start_step, total_steps),
        env,
        num_steps=total_steps,
        log_every_steps=trainer.log_every_steps,
        progress_bar=trainer.progress_bar,
        max_steps=start_step if validation.exhausted else trainer.max_steps,
        start_step=start_step,
        scheduler=scheduler,
        hooks=hooks,
        scalars=scalars,
    )
    test_weights, test_weights_step = _restore_best(checkpointer, built, scheduler, result.steps, env,
                                                    ckpt.keep_best and (validation.best_step is not None or resumed))
    return Fitted(result, start_step, validation, scalars, checkpointer.directory, epochs, test_weights,
                  test_weights_step)


def _restore_best(checkpointer: Checkpointer, built: Trainable, scheduler, last_step: int, env: DistributedEnv,
                  may_restore: bool) -> Tuple[str, int]:
    """The weights the test evaluation uses, and their step: the best checkpoint's, loaded into
    the model (DCP, any number of ranks) unless they are the last step's anyway; the last
    step's where this run (or the attempts it resumed) saved no best checkpoint."""
    best = best_record(checkpointer.directory) if may_restore else None
    if best is None:
        return "last", last_step
    step = int(best["step"])
    if step != last_step:
        checkpointer.load(checkpointer.directory / BEST, built.model, built.optimizer, scheduler, weights_only=True)
    if env.is_main:
        log.info("test metrics from the best checkpoint's weights: step %d of %d (val %s %.4f)",
                 step, last_step, best["metric"], best["value"])
    return "best", step


def _report(
    cfg: DictConfig, built: Trainable, fitted: Fitted, run_dir: Path, env: DistributedEnv, job_start: float,
    initialised_rows: Dict[str, int],
) -> Dict[str, float]:
    """Evaluates on the test split and writes the run's figures (metrics.json); returns them.
    `initialised_rows`: the rows each `embedding.init` table took."""
    trainer, result, rows = cfg.trainer, fitted.result, built.rows
    metrics = evaluate(built.model, built.source, "test", built.hashing, env, trainer.eval_batch_size,
                       auc_bins_setting(trainer.auc, trainer.auc_bins))
    memory = peak_memory_per_rank(env.device)
    state_bytes = per_rank(fused_state_bytes(built.model), env.device)
    summary = {
        **{f"test_{k}": v for k, v in metrics.items()},
        **{f"val_{k}": v for k, v in fitted.validation.last.items()},
        "best_val_" + trainer.best_metric: fitted.validation.best,
        "embedding_bytes": sum(sum(row["bytes_per_rank"].values()) for row in rows),
        "embedding_bytes_per_rank": bytes_per_rank(rows),
        "optimizer_state_bytes": sum(state_bytes),
        "optimizer_state_bytes_per_rank": dict(enumerate(state_bytes)),
        "comms_bytes_per_step": pooled_comms_bytes(
            rows, trainer.batch_size, env.world_size, env.local_world_size, wire_bytes(cfg.comms, env.device)
        ),
        "train_steps": result.steps,
        "epochs_planned": fitted.epochs,
        "test_weights": fitted.test_weights,
        "test_weights_step": fitted.test_weights_step,
        "resumed_from_step": fitted.start_step,
        "stopped_early": result.stopped_early or fitted.validation.exhausted,
        "train_samples": result.samples,
        "train_seconds": result.seconds,
        "train_samples_per_second": result.samples_per_second,
        "seconds_to_first_step": result.first_step_finished_at - job_start if result.losses else None,
        "peak_memory_bytes_per_rank": memory,
        "world_size": env.world_size,
        "parameters": built.parameters,
        "initialised_rows": initialised_rows,
    }
    fitted.scalars.add({f"test/{k}": v for k, v in metrics.items()}, result.steps)
    fitted.scalars.close()
    if env.is_main:
        if isinstance(built.source, ShardSource):
            summary["splits"] = built.source.split_counts()
        summary["run_dir_bytes"] = _disk_bytes(run_dir)
        summary["checkpoint_bytes"] = _disk_bytes(fitted.checkpoint_dir)
        log.info("run directory %s: %s on disk (checkpoints %s)", run_dir, _human(summary["run_dir_bytes"]),
                 _human(summary["checkpoint_bytes"]))
        teacher = f" (teacher {metrics['teacher_auc']:.4f})" if "teacher_auc" in metrics else ""
        log.info(
            "test AUC %.4f%s  log-loss %.4f  NE %.4f  calibration %.3f  |  %d steps, %.0f samples/s",
            metrics["auc"], teacher, metrics["log_loss"],
            metrics["normalized_entropy"], metrics["calibration"], result.steps, result.samples_per_second,
        )
        write_json_atomic(run_dir / "metrics.json", summary)
    return summary


def planned_epochs(trainer: DictConfig, has_validation: bool) -> int:
    """`trainer.epochs`; null: `max_epochs` where validation can stop training early, else one."""
    if trainer.epochs is not None:
        return trainer.epochs
    return trainer.max_epochs if has_validation else 1


def _eval_every_steps(trainer: DictConfig, steps_per_epoch: int, converging: bool = False) -> Optional[int]:
    """Steps between validations: an epoch's with `trainer.eval_every=epoch`, else `eval_every_steps`;
    an epoch's too when both are null and training runs to convergence."""
    if trainer.eval_every != EvalEvery.epoch:
        if trainer.eval_every_steps is None and converging:
            return steps_per_epoch
        return trainer.eval_every_steps
    if trainer.eval_every_steps is not None:
        raise ValueError(f"trainer.eval_every=epoch and trainer.eval_every_steps={trainer.eval_every_steps}: "
                         "set one of them")
    return steps_per_epoch


def _log_duration(trainer: DictConfig, epochs: int, has_validation: bool, eval_every_steps: Optional[int],
                  keep_best: bool, recommended_epochs: int) -> None:
    """How long training runs and which weights the test metrics will come from."""
    if not has_validation:
        log.info("the data has no validation split: %d epoch(s), no validation, no early stopping, and the test "
                 "metrics from the last weights%s", epochs,
                 " (trainer.epochs=null trains to convergence only with one)" if trainer.epochs is None else "")
        return
    patience = trainer.early_stopping_patience if eval_every_steps else None
    stopping = (f"stopping after {patience} validation(s) without a better val {trainer.best_metric}"
                if patience else "no early stopping")
    every = f"every {eval_every_steps} steps" if eval_every_steps else "at the end"
    weights = "the best checkpoint's weights" if keep_best else "the last weights (checkpoint.keep_best=false)"
    cap = f" (the data config recommends {recommended_epochs})" if trainer.epochs is None else ""
    log.info("training %s%d epoch(s)%s, validating %s, %s; test metrics from %s",
             "to convergence: up to " if trainer.epochs is None else "", epochs, cap, every, stopping, weights)


def _log_data_size(source, batch_size: int, world_size: int, steps_per_epoch: int) -> None:
    """The splits' sizes (and positives, for shards), and a warning when an epoch is only a few steps."""
    if isinstance(source, ShardSource):
        counts = source.split_counts()
        log.info("splits: %s", ", ".join(f"{s} {c['rows']:,} rows ({c['positives']:,} positive)" for s, c in counts.items()))
    else:
        log.info("splits: %s", ", ".join(f"{s} {source.num_rows(s):,} rows" for s in ("train", "val", "test")))
    if steps_per_epoch < FEW_STEPS_PER_EPOCH:
        log.warning("an epoch is only %d steps (%d train rows, batch %d per rank × %d ranks; the data config "
                    "recommends %d): lower trainer.batch_size, or the data config's data.batch_size",
                    steps_per_epoch, source.num_rows("train"), batch_size, world_size, source.batch_size)


def _disk_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) if directory.is_dir() else 0


def _human(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _train_batches(source, hashing, cfg: DictConfig, env: DistributedEnv, start_step: int, total_steps: int):
    """Training batches from global step `start_step` on, across epochs, built by `trainer.reader_workers`
    processes (0: a background thread)."""
    dataset = TrainBatches(source, hashing, cfg.trainer.batch_size, env.rank, env.world_size, start_step, total_steps)
    return train_batches(dataset, cfg.trainer.reader_workers, pin_memory=env.device.type == "cuda")

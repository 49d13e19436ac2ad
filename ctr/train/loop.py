"""The training loop: TorchRec's sparse-dist pipeline, with periodic hooks and logging on rank 0."""

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from ctr.parallel.process_group import DistributedEnv
from ctr.train.guards import check_finite_loss
from ctr.train.scalars import Scalars, learning_rates, peak_memory_per_rank

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run of the loop did. `losses` are this rank's per-step mean losses."""

    steps: int = 0  # global step count reached (includes steps done before a resume)
    samples: int = 0
    seconds: float = 0.0
    first_step_finished_at: float = 0.0  # time.time() when this run's first step was done
    losses: List[float] = field(default_factory=list)
    step_seconds: List[float] = field(default_factory=list)  # wall time of each step, hooks excluded
    stopped_early: bool = False

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


@dataclass
class Hooks:
    """Periodic work between steps; each hook is a collective, called on every rank.

    `on_eval(step)` runs with the model's own forward restored and returns True to stop
    training (early stopping); `on_checkpoint(step)` saves state after `step` steps.
    """

    eval_every_steps: Optional[int] = None
    on_eval: Optional[Callable[[int], bool]] = None
    checkpoint_every_steps: Optional[int] = None
    on_checkpoint: Optional[Callable[[int], None]] = None


def _global_mean(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def is_due(step: int, every: Optional[int]) -> bool:
    """Whether a task set to run every `every` steps (None: never) runs after `step`."""
    return bool(every) and step % every == 0


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    env: DistributedEnv,
    num_steps: int,
    log_every_steps: int,
    progress_bar: bool = True,
    max_steps: Optional[int] = None,
    start_step: int = 0,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    hooks: Hooks = Hooks(),
    scalars: Optional[Scalars] = None,
) -> TrainResult:
    """Runs the pipeline from `start_step` until the batches run out (or `max_steps`).

    The pipeline distributes batch i+1's sparse input while batch i computes, where the
    device has streams to overlap them (CUDA); on CPU it runs the same stages in order.
    A nan or inf loss stops training (`check_finite_loss`) at the next log step, or before
    the next checkpoint or validation, whichever comes first.
    """
    model.train()
    pipeline = TrainPipelineSparseDist(model, optimizer, env.device)
    total = min(num_steps, max_steps) if max_steps is not None else num_steps
    bar = tqdm(
        total=total, initial=start_step, disable=not (env.is_main and progress_bar), unit="step", dynamic_ncols=True
    )
    result = TrainResult(steps=start_step)
    iterator = iter(batches)
    start = window_start = step_start = time.perf_counter()
    window_samples = 0
    checked = start_step  # the loss is known finite up to this step
    while result.steps < total:
        try:
            loss, _, labels = pipeline.progress(iterator)
        except StopIteration:
            break
        result.steps += 1
        if not result.losses:
            result.first_step_finished_at = time.time()
        if scheduler is not None:
            scheduler.step()
        samples = labels.numel() * env.world_size
        result.samples += samples
        window_samples += samples
        result.losses.append(loss.item())
        result.step_seconds.append(time.perf_counter() - step_start)
        bar.update(1)
        step = result.steps
        if step % log_every_steps == 0 or step == total:
            now = time.perf_counter()
            rate = window_samples / (now - window_start)
            recent = result.losses[-log_every_steps:]
            mean_loss = _global_mean(sum(recent) / len(recent))
            check_finite_loss(mean_loss, step, recent)
            checked = step
            memory = peak_memory_per_rank(env.device)
            bar.set_postfix(loss=f"{mean_loss:.4f}", samples_per_s=f"{rate:,.0f}")
            if env.is_main:
                log.info("step %d/%d  train loss %.4f  %.0f samples/s", step, total, mean_loss, rate)
            if scalars is not None:
                scalars.add(
                    {"train/loss": mean_loss, "train/samples_per_second": rate, **learning_rates(optimizer),
                     **{f"memory/peak_bytes_rank{r}": m for r, m in enumerate(memory)}},
                    step,
                )
            window_start, window_samples = now, 0
        elif is_due(step, hooks.eval_every_steps) or is_due(step, hooks.checkpoint_every_steps):
            recent = result.losses[checked - step:]  # the steps since the last check
            check_finite_loss(_global_mean(sum(recent) / len(recent)), step, recent)
            checked = step
        if is_due(step, hooks.eval_every_steps) and hooks.on_eval is not None:
            pipeline.detach()  # evaluation calls the model's own forward
            stop = hooks.on_eval(step)
            pipeline.attach(model)
            if stop:
                result.stopped_early = True
                break
        if is_due(step, hooks.checkpoint_every_steps) and hooks.on_checkpoint is not None:
            hooks.on_checkpoint(step)
        step_start = time.perf_counter()
    result.seconds = time.perf_counter() - start
    bar.close()
    pipeline.detach()  # restores the model's own forward, for evaluation
    return result

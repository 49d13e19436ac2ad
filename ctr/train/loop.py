"""The training loop: TorchRec's sparse-dist pipeline, with periodic hooks and logging on rank 0."""

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import PrefetchTrainPipelineSparseDist, TrainPipelineSparseDist
from tqdm import tqdm

from ctr.parallel.planner import uses_uvm_caching
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
    # host wall time of each step, hooks excluded; on CUDA the step may still run on the device
    step_seconds: List[float] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


@dataclass
class Hooks:
    """Periodic work between steps; each hook is a collective, called on every rank.

    `on_eval(step)` runs with the model's own forward restored and returns True to stop
    training (early stopping); `on_checkpoint(step)` saves state after `step` steps. At the
    end of the run (`finish`) both run once more, unless the loop just ran them.
    """

    eval_every_steps: Optional[int] = None
    on_eval: Optional[Callable[[int], bool]] = None
    checkpoint_every_steps: Optional[int] = None
    on_checkpoint: Optional[Callable[[int], None]] = None

    def eval_due(self, step: int) -> bool:
        return self.on_eval is not None and is_due(step, self.eval_every_steps)

    def checkpoint_due(self, step: int) -> bool:
        return self.on_checkpoint is not None and is_due(step, self.checkpoint_every_steps)

    def finish(self, result: TrainResult, start_step: int) -> None:
        """The run's last checkpoint (if it trained any step) and its last validation (unless
        it stopped early), each unless the loop ran it after the last step."""
        # An early stop leaves the loop before its checkpoint of that step, due or not.
        last_saved = self.checkpoint_due(result.steps) and not result.stopped_early
        if self.on_checkpoint is not None and result.steps > start_step and not last_saved:
            self.on_checkpoint(result.steps)
        if self.on_eval is not None and not (result.stopped_early or self.eval_due(result.steps)):
            self.on_eval(result.steps)


def _global_mean(losses: torch.Tensor) -> float:
    """The mean of `losses` over every rank; they stay on the rank's device, as NCCL requires."""
    total = losses.sum(dtype=torch.float64)
    dist.all_reduce(total)
    return total.item() / (losses.numel() * dist.get_world_size())


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
    hooks: Optional[Hooks] = None,
    scalars: Optional[Scalars] = None,
) -> TrainResult:
    """Runs the pipeline from `start_step` until the batches run out (or `max_steps`).

    The pipeline distributes batch i+1's sparse input while batch i computes, where the
    device has streams to overlap them (CUDA); on CPU it runs the same stages in order.
    The hooks' end-of-run work (`Hooks.finish`) runs last, not counted in the timings.
    A nan or inf loss stops training (`check_finite_loss`) at the next log step, or before
    the next checkpoint or validation, whichever comes first.
    """
    hooks = hooks or Hooks()
    model.train()
    # UVM-cached tables need their rows fetched into the cache ahead of the lookup (CUDA only).
    prefetch = env.device.type == "cuda" and uses_uvm_caching(model.plan)
    pipeline = (PrefetchTrainPipelineSparseDist if prefetch else TrainPipelineSparseDist)(model, optimizer, env.device)
    total = min(num_steps, max_steps) if max_steps is not None else num_steps
    bar = tqdm(
        total=total, initial=start_step, disable=not (env.is_main and progress_bar), unit="step", dynamic_ncols=True
    )
    result = TrainResult(steps=start_step)
    iterator = iter(batches)
    start = window_start = step_start = time.perf_counter()
    window_samples = 0
    # Step losses stay on the device until a log step: reading each one would wait for its step.
    window_losses: List[torch.Tensor] = []
    checked = start_step  # the loss is known finite up to this step
    while result.steps < total:
        try:
            loss, _, labels = pipeline.progress(iterator)
        except StopIteration:
            break
        result.steps += 1
        if result.steps == start_step + 1:
            result.first_step_finished_at = time.time()
        if scheduler is not None:
            scheduler.step()
        samples = labels.numel() * env.world_size
        result.samples += samples
        window_samples += samples
        window_losses.append(loss)  # ClickTask returns it detached
        result.step_seconds.append(time.perf_counter() - step_start)
        bar.update(1)
        step = result.steps
        if step % log_every_steps == 0 or step == total:
            now = time.perf_counter()
            rate = window_samples / (now - window_start)
            recent = torch.stack(window_losses)
            window_losses.clear()
            mean_loss = _global_mean(recent)
            check_finite_loss(mean_loss, step, recent)
            checked = step
            result.losses.extend(recent.tolist())
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
        elif hooks.eval_due(step) or hooks.checkpoint_due(step):
            unchecked = torch.stack(window_losses[checked - step:])  # the steps since the last check
            check_finite_loss(_global_mean(unchecked), step, unchecked)
            checked = step
        if hooks.eval_due(step):
            pipeline.detach()  # evaluation calls the model's own forward
            stop = hooks.on_eval(step)
            pipeline.attach(model)
            if stop:
                result.stopped_early = True
                break
        if hooks.checkpoint_due(step):
            hooks.on_checkpoint(step)
        step_start = time.perf_counter()
    result.seconds = time.perf_counter() - start
    if window_losses:  # steps after the last log step
        result.losses.extend(torch.stack(window_losses).tolist())
    bar.close()
    pipeline.detach()  # restores the model's own forward, for evaluation
    hooks.finish(result, start_step)
    return result

"""The training loop: TorchRec's sparse-dist pipeline, with logging on rank 0."""

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from ctr.parallel.process_group import DistributedEnv

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run of the loop did. `losses` are this rank's per-step mean losses."""

    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    first_step_finished_at: float = 0.0  # time.time() when step 1 was done
    losses: List[float] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def _global_mean(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    env: DistributedEnv,
    num_steps: int,
    log_every_steps: int,
    progress_bar: bool = True,
    max_steps: Optional[int] = None,
) -> TrainResult:
    """Runs the pipeline until the batches run out (or `max_steps`).

    The pipeline distributes batch i+1's sparse input while batch i computes, where the
    device has streams to overlap them (CUDA); on CPU it runs the same stages in order.
    """
    model.train()
    pipeline = TrainPipelineSparseDist(model, optimizer, env.device)
    total = min(num_steps, max_steps) if max_steps is not None else num_steps
    bar = tqdm(total=total, disable=not (env.is_main and progress_bar), unit="step", dynamic_ncols=True)
    result = TrainResult()
    iterator = iter(batches)
    window_start, window_samples = time.perf_counter(), 0
    start = window_start
    while result.steps < total:
        try:
            loss, _, labels = pipeline.progress(iterator)
        except StopIteration:
            break
        result.steps += 1
        if result.steps == 1:
            result.first_step_finished_at = time.time()
        samples = labels.numel() * env.world_size
        result.samples += samples
        window_samples += samples
        result.losses.append(loss.item())
        bar.update(1)
        if result.steps % log_every_steps == 0 or result.steps == total:
            now = time.perf_counter()
            rate = window_samples / (now - window_start)
            mean_loss = _global_mean(sum(result.losses[-log_every_steps:]) / len(result.losses[-log_every_steps:]))
            bar.set_postfix(loss=f"{mean_loss:.4f}", samples_per_s=f"{rate:,.0f}")
            if env.is_main:
                log.info("step %d/%d  train loss %.4f  %.0f samples/s", result.steps, total, mean_loss, rate)
            window_start, window_samples = now, 0
    result.seconds = time.perf_counter() - start
    bar.close()
    pipeline.detach()  # restores the model's own forward, for evaluation
    return result

"""TensorBoard scalars, written by rank 0, and per-rank memory for them."""

import resource
from pathlib import Path
from typing import Dict, List

import torch
import torch.distributed as dist


def peak_memory_bytes(device: torch.device) -> int:
    """This rank's peak memory: CUDA allocator peak on a GPU, process peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def per_rank(value: int, device: torch.device) -> List[int]:
    """Every rank's `value`, in rank order (a collective)."""
    mine = torch.tensor([value], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [int(t.item()) for t in gathered]


def peak_memory_per_rank(device: torch.device) -> List[int]:
    """Every rank's peak memory (a collective)."""
    return per_rank(peak_memory_bytes(device), device)


class Scalars:
    """A SummaryWriter on rank 0 (if enabled); a no-op everywhere else."""

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))

    def add(self, values: Dict[str, float], step: int) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def learning_rates(optimizer: torch.optim.Optimizer) -> Dict[str, float]:
    """The current rate of each child optimizer of a TorchRec CombinedOptimizer."""
    rates: Dict[str, float] = {}
    for name, child in getattr(optimizer, "optimizers", [("all", optimizer)]):
        if child.param_groups:
            rates[f"lr/{name}"] = float(child.param_groups[0]["lr"])
    return rates

"""Learning-rate schedules for the table and dense optimizers: warm-up, then decay."""

import math

from torch.optim.lr_scheduler import LambdaLR
from torchrec.optim.keyed import CombinedOptimizer

from ctr.config import Decay
from ctr.parallel.optimizers import DENSE


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay: Decay, final_fraction: float) -> float:
    """Multiplier of the base rate before step `step` (0-based).

    >>> [round(lr_factor(s, 10, 2, "linear", 0.0), 2) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == Decay.none:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if decay == Decay.linear:
        return 1.0 - (1.0 - final_fraction) * progress
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: CombinedOptimizer, sparse_schedule, dense_schedule, total_steps: int) -> LambdaLR:
    """One LambdaLR over every param group: the dense optimizer's groups follow
    `dense_schedule`, the tables' (fused or not) follow `sparse_schedule`."""

    def schedule(cfg):
        return lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.decay, cfg.final_fraction)

    lambdas = [
        schedule(dense_schedule if name == DENSE else sparse_schedule)
        for name, child in optimizer.optimizers
        for _ in child.param_groups
    ]
    return LambdaLR(optimizer, lr_lambda=lambdas)

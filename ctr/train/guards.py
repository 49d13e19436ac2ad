"""Checks that stop a training run early and by name instead of late or silently: the
config's counts and sizes before anything is built, the steps an epoch has once the data
is known, and a non-finite training loss before any checkpoint or validation of its weights.

The typed config (`ctr.config`) fixes each key's type; OmegaConf runs no `__post_init__`,
so the ranges are checked here, once, when a run starts.
"""

import math
from typing import Optional, Sequence, Union

import torch
from omegaconf import DictConfig, OmegaConf

# Keys that must be positive integers; then those where null means "off" or "none".
_POSITIVE = (
    "trainer.batch_size", "trainer.eval_batch_size", "trainer.max_epochs", "trainer.log_every_steps",
    "embedding.num_embeddings", "embedding.dim", "distributed.nproc_per_node",
)
_POSITIVE_OR_NULL = (
    "trainer.epochs", "trainer.eval_every_steps", "trainer.early_stopping_patience", "checkpoint.every_steps",
)
# trainer.max_steps may also be 0: evaluate a resumed checkpoint without training (`check_steps`)
# Per-feature maps whose values must be positive integers.
_POSITIVE_PER_FEATURE = ("embedding.num_embeddings_per_feature", "embedding.dim_per_feature")


class ConfigValueError(ValueError):
    """A config value out of its range; the message names the key and what was expected."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became nan or inf; the message names the steps."""


def check_config(cfg: DictConfig) -> None:
    """Fails on the first count or size that cannot work (batch size 0, -1 table rows, 0 epochs)."""
    for key in _POSITIVE + _POSITIVE_OR_NULL:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None or key in _POSITIVE:
            _check_positive(key, value)
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0):
        raise ConfigValueError(f"trainer.max_steps={max_steps!r}: expected null or an integer >= 0")
    for key in _POSITIVE_PER_FEATURE:
        for feature, value in (OmegaConf.select(cfg, key, default=None) or {}).items():
            _check_positive(f"{key}.{feature}", value)


def _check_positive(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigValueError(f"{key}={value!r}: expected a positive integer")


def check_steps(steps_per_epoch: int, train_rows: int, batch_size: int, world_size: int,
                max_steps: Optional[int], resumed: bool) -> None:
    """Fails when an epoch has no step (fewer train rows than ranks, since the partial last step
    trains), or when `max_steps` 0 has no checkpoint to evaluate:
    either would save an untrained model as the best."""
    if steps_per_epoch < 1:
        raise ConfigValueError(
            f"the train split's {train_rows} rows cannot give each of {world_size} ranks a row (trainer.batch_size="
            f"{batch_size}; a last partial step trains when every rank gets one): no training step would run; "
            "use more data or fewer ranks"
        )
    if max_steps == 0 and not resumed:
        raise ConfigValueError("trainer.max_steps=0 trains nothing, and no checkpoint is resumed to evaluate "
                               "(checkpoint.resume); set max_steps >= 1 or null")


def check_finite_loss(mean_loss: float, step: int, losses: Union[torch.Tensor, Sequence[float]]) -> None:
    """Fails when `mean_loss`, the mean over all ranks of the steps ending at `step`, is nan or inf.

    Called where the loss is read anyway (log steps) and before every checkpoint or
    validation, so neither ever runs on weights a non-finite loss has updated. `losses`,
    this rank's losses of those steps, names the first non-finite one on this rank.
    """
    if math.isfinite(mean_loss):
        return
    values = torch.as_tensor(losses, dtype=torch.float64).detach().cpu().reshape(-1)
    first = step - len(values) + 1
    bad = (~torch.isfinite(values)).nonzero()
    here = f", on this rank first at step {first + int(bad[0])}" if len(bad) else ""
    raise NonFiniteLossError(
        f"training loss is {mean_loss} at step {step} (mean over all ranks of steps {first}-{step}{here}); "
        f"training stops with no checkpoint or validation of these weights, keeping the checkpoints saved before "
        f"step {first}. Lower the learning rates (optimizer.dense_lr, optimizer.sparse_lr) or look for extreme "
        "values in the data"
    )

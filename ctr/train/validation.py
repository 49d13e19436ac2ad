"""Validation during training: metrics on the validation split, the best checkpoint, early stopping."""

import logging
from typing import Callable, Dict, Optional

from ctr.config import BestMetric
from ctr.train.metrics import is_better
from ctr.train.scalars import Scalars

log = logging.getLogger(__name__)


class Validation:
    """Called every `trainer.eval_every_steps` steps and at the end; returns True to stop early.

    `best` carries the best value over from an earlier attempt of the same run (a
    restarted job), so a restart never replaces a better checkpoint with a worse one;
    `evaluations_without_improvement` carries its patience count (from the checkpoint resumed).
    """

    def __init__(
        self,
        evaluate: Callable[[], Dict[str, float]],
        metric: BestMetric,
        patience: Optional[int],
        save_best: Optional[Callable[[int, Dict[str, float]], None]],
        scalars: Scalars,
        is_main: bool,
        best: Optional[float] = None,
        evaluations_without_improvement: int = 0,
    ) -> None:
        self._evaluate = evaluate
        self.metric = metric
        self._patience = patience
        self._save_best = save_best
        self._scalars = scalars
        self._is_main = is_main
        self.best = best
        self.best_step: Optional[int] = None
        self.evaluations_without_improvement = evaluations_without_improvement
        self.last: Dict[str, float] = {}

    @property
    def exhausted(self) -> bool:
        """Whether the patience has run out: a resumed run that had stopped early trains no further."""
        return self._patience is not None and self.evaluations_without_improvement >= self._patience

    def __call__(self, step: int) -> bool:
        self.last = self._evaluate()
        value = self.last[self.metric]
        self._scalars.add({f"val/{name}": v for name, v in self.last.items()}, step)
        improved = self.best is None or is_better(self.metric, value, self.best)
        if self._is_main:
            log.info(
                "step %d  validation AUC %.4f  log-loss %.4f  NE %.4f  calibration %.3f%s",
                step, self.last["auc"], self.last["log_loss"], self.last["normalized_entropy"],
                self.last["calibration"], "  (best)" if improved else "",
            )
        if improved:
            self.best, self.best_step = value, step
            self.evaluations_without_improvement = 0
            if self._save_best is not None:
                self._save_best(step, self.last)
            return False
        self.evaluations_without_improvement += 1
        if self.exhausted and self._is_main:
            log.info("early stopping: %s has not improved for %d evaluations", self.metric, self._patience)
        return self.exhausted

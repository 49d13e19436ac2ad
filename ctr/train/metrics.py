"""Click-model quality over a whole split, synced across ranks by torchmetrics."""

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from ctr.config import BestMetric

# Whether a higher value is better, for each metric that can pick the best checkpoint.
HIGHER_IS_BETTER = {
    BestMetric.auc: True, BestMetric.accuracy: True, BestMetric.log_loss: False, BestMetric.normalized_entropy: False,
}


class BinnedAUROC(Metric):
    """AUC from a histogram of predicted probabilities per class: `bins` equal-width bins on
    [0, 1], whatever the split's size, summed across ranks (the exact AUC keeps, and gathers
    on every rank, every prediction).

    A positive and a negative in the same bin count as half a correctly ordered pair, so the
    result is within half the share of same-bin (positive, negative) pairs of the exact AUC
    (`error_bound`).

    >>> auc = BinnedAUROC(bins=4)
    >>> auc.update(torch.tensor([0.1, 0.4, 0.6, 0.9]), torch.tensor([0, 0, 1, 1]))
    >>> auc.compute().item()
    1.0
    """

    full_state_update = False

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins
        # float64 counts: a product of two int64 counts overflows past ~3e9 rows per class
        self.add_state("positives", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("negatives", torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        index = (probabilities.double() * self.bins).long().clamp_(0, self.bins - 1)
        positive = labels.bool()
        self.positives += torch.bincount(index[positive], minlength=self.bins)
        self.negatives += torch.bincount(index[~positive], minlength=self.bins)

    def compute(self) -> torch.Tensor:
        negatives_below = torch.cumsum(self.negatives, 0) - self.negatives
        ordered = (self.positives * (negatives_below + 0.5 * self.negatives)).sum()
        return ordered / (self.positives.sum() * self.negatives.sum())

    def error_bound(self) -> torch.Tensor:
        """The most the result can differ from the exact AUC: half the same-bin pairs' share."""
        return 0.5 * (self.positives * self.negatives).sum() / (self.positives.sum() * self.negatives.sum())


def auc_metric(auc_bins: Optional[int]) -> Metric:
    """The exact AUC (`auc_bins` None) or the binned one."""
    return BinaryAUROC() if auc_bins is None else BinnedAUROC(auc_bins)


def auc_bins_setting(auc: str, bins: int) -> Optional[int]:
    """`trainer.auc` and `trainer.auc_bins` as `auc_metric` takes them: None for the exact AUC."""
    if auc == "binned" and bins < 2:
        raise ValueError(f"trainer.auc_bins={bins}: expected at least 2")
    return bins if auc == "binned" else None


class ClickMetrics:
    """AUC, log-loss, normalised entropy, calibration and accuracy.

    Every rank updates with its own rows; `compute` gathers all ranks' states, so AUC is
    the AUC of every row of the split (not an average of per-rank AUCs); `auc_bins` set,
    it is the bounded-memory `BinnedAUROC`. Normalised
    entropy (He et al. 2014) is log-loss divided by the entropy of the split's positive
    rate: below 1 means better than always predicting that rate. Calibration is mean
    prediction over positive rate (1 is calibrated).
    """

    def __init__(self, device: torch.device, auc_bins: Optional[int] = None) -> None:
        self._auc = auc_metric(auc_bins).to(device)
        self._accuracy = BinaryAccuracy().to(device)
        self._log_loss = MeanMetric().to(device)
        self._mean_prediction = MeanMetric().to(device)
        self._positive_rate = MeanMetric().to(device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.float(), labels.float()
        probabilities = torch.sigmoid(logits)
        self._auc.update(probabilities, labels.long())
        self._accuracy.update(probabilities, labels.long())
        self._log_loss.update(F.binary_cross_entropy_with_logits(logits, labels, reduction="none"))
        self._mean_prediction.update(probabilities)
        self._positive_rate.update(labels)

    def compute(self) -> Dict[str, float]:
        log_loss = self._log_loss.compute().item()
        rate = self._positive_rate.compute().item()
        entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)) if 0 < rate < 1 else float("nan")
        return {
            "auc": self._auc.compute().item(),
            "log_loss": log_loss,
            "normalized_entropy": log_loss / entropy,
            "calibration": self._mean_prediction.compute().item() / rate if rate else float("nan"),
            "accuracy": self._accuracy.compute().item(),
            "positive_rate": rate,
        }


def is_better(metric: BestMetric, value: float, best: float) -> bool:
    return value > best if HIGHER_IS_BETTER[metric] else value < best

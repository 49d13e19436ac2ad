"""Click-model quality over a whole split, synced across ranks by torchmetrics."""

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

# Metrics for which a higher value is better; the others are lower-is-better.
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "log_loss": False, "normalized_entropy": False}


class ClickMetrics:
    """AUC, log-loss, normalised entropy, calibration and accuracy.

    Every rank updates with its own rows; `compute` gathers all ranks' states, so AUC is
    the AUC of every row of the split (not an average of per-rank AUCs). Normalised
    entropy (He et al. 2014) is log-loss divided by the entropy of the split's positive
    rate: below 1 means better than always predicting that rate. Calibration is mean
    prediction over positive rate (1 is calibrated).
    """

    def __init__(self, device: torch.device) -> None:
        self._auc = BinaryAUROC().to(device)
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


def check_best_metric(metric: str) -> None:
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"trainer.best_metric={metric!r}: expected one of {sorted(HIGHER_IS_BETTER)}")


def is_better(metric: str, value: float, best: float) -> bool:
    check_best_metric(metric)
    return value > best if HIGHER_IS_BETTER[metric] else value < best

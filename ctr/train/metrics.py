"""Click-model quality over a whole split, synced across ranks by torchmetrics."""

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from ctr.config import BestMetric

# Whether a higher value is better, for each metric that can pick the best checkpoint.
HIGHER_IS_BETTER = {
    BestMetric.auc: True, BestMetric.accuracy: True, BestMetric.log_loss: False, BestMetric.normalized_entropy: False,
}


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


def is_better(metric: BestMetric, value: float, best: float) -> bool:
    return value > best if HIGHER_IS_BETTER[metric] else value < best

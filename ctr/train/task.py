"""The module that is sharded and trained: a CTR model and its log-loss."""

from typing import Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch


class ClickTask(nn.Module):
    """Scores a batch and returns (loss, (loss, logits, labels)), the contract of TorchRec's
    train pipelines. `model` takes (dense [B, D], sparse KJT) and returns logits [B]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = self.loss_fn(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)

"""The module that is sharded and trained: a CTR model and its log-loss."""

from contextlib import ExitStack
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from ctr.models.table_groups import TableGroup

# `trainer.dense_precision` → the autocast dtype of the model's forward (None: no autocast).
DENSE_PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16}


class ClickTask(nn.Module):
    """Scores a batch and returns (loss, (loss, logits, labels)), the contract of TorchRec's
    train pipelines. `model` takes (dense [B, D], sparse KJT) and returns logits [B].

    `dense_precision` bf16 runs the model under autocast: its matmuls take bf16 inputs
    while the parameters (the master weights the optimizer updates) stay fp32. The table
    lookups are not autocast ops, so tables keep their own storage precision; the logits
    and the loss are fp32.
    """

    def __init__(self, model: nn.Module, dense_precision: str = "fp32") -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()
        self._autocast_dtype = DENSE_PRECISIONS[dense_precision]
        # Autocast on every device type present (each affects only its own ops): the device
        # is not known here, and the pipeline's fx trace sees no concrete `tensor.device`.
        self._autocast_devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)

    def table_groups(self) -> Dict[str, TableGroup]:
        """The model's table groups (`ctr.models.table_groups`)."""
        return self.model.table_groups()

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        with ExitStack() as stack:
            if self._autocast_dtype is not None:
                for device_type in self._autocast_devices:
                    stack.enter_context(torch.autocast(device_type, dtype=self._autocast_dtype))
            logits = self.model(batch.dense_features, batch.sparse_features).float()
        loss = self.loss_fn(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)

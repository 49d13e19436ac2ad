"""Evaluation over a whole split, each row scored once, metrics synced across ranks."""

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC
from torchrec.datasets.utils import Batch

from ctr.data.reader import RowSource, rank_rows
from ctr.data.rows import rows_to_batch
from ctr.parallel.process_group import DistributedEnv


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    source: RowSource,
    split: str,
    transform: Callable[[Batch], Batch],
    env: DistributedEnv,
    batch_size: int,
) -> Dict[str, float]:
    """AUC and log-loss of `model` on `split`; also the teacher's AUC where the source has one.

    torchmetrics gathers every rank's predictions before computing AUC, so the figure is
    the AUC of the whole split, not an average of per-rank AUCs.
    """
    model.eval()
    # On the rank's device: with NCCL, the metrics' all-gather needs CUDA tensors.
    auc, teacher_auc, log_loss = (m.to(env.device) for m in (BinaryAUROC(), BinaryAUROC(), MeanMetric()))
    has_teacher = False
    for rows in rank_rows(source, split, batch_size, env.rank, env.world_size, drop_last=False):
        batch = transform(rows_to_batch(rows, source.sparse_names)).to(env.device)
        _, (_, logits, labels) = model(batch)
        logits = logits.float()
        auc.update(torch.sigmoid(logits), labels.long())
        log_loss.update(F.binary_cross_entropy_with_logits(logits, labels, reduction="none"))
        if rows.teacher_logits is not None:
            has_teacher = True
            teacher_auc.update(torch.from_numpy(rows.teacher_logits).to(env.device), labels.long())
    model.train()
    metrics = {"auc": auc.compute().item(), "log_loss": log_loss.compute().item()}
    if has_teacher:
        metrics["teacher_auc"] = teacher_auc.compute().item()
    return metrics

"""Evaluation over a whole split, each row scored once, metrics synced across ranks."""

from typing import Callable, Dict

import torch
from torchmetrics.classification import BinaryAUROC
from torchrec.datasets.utils import Batch

from ctr.data.reader import RowSource, rank_rows
from ctr.data.rows import rows_to_batch
from ctr.parallel.process_group import DistributedEnv
from ctr.train.metrics import ClickMetrics


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    source: RowSource,
    split: str,
    transform: Callable[[Batch], Batch],
    env: DistributedEnv,
    batch_size: int,
) -> Dict[str, float]:
    """`ClickMetrics` of `model` on `split`, plus the teacher's AUC where the source has one."""
    was_training = model.training
    model.eval()
    metrics = ClickMetrics(env.device)
    teacher_auc = BinaryAUROC().to(env.device)
    has_teacher = False
    for rows in rank_rows(source, split, batch_size, env.rank, env.world_size, drop_last=False):
        batch = transform(rows_to_batch(rows, source.sparse_names)).to(env.device)
        _, (_, logits, labels) = model(batch)
        metrics.update(logits, labels)
        if rows.teacher_logits is not None:
            has_teacher = True
            teacher_auc.update(torch.from_numpy(rows.teacher_logits).to(env.device), labels.long())
    model.train(was_training)
    result = metrics.compute()
    if has_teacher:
        result["teacher_auc"] = teacher_auc.compute().item()
    return result

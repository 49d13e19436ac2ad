"""Evaluation over a whole split, each row scored once, metrics synced across ranks."""

from typing import Callable, Dict, Iterator, Optional

import torch
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from ctr.data.reader import RowSource, rank_rows
from ctr.data.rows import rows_to_batch
from ctr.parallel.process_group import DistributedEnv
from ctr.train.metrics import ClickMetrics, auc_metric


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    source: RowSource,
    split: str,
    transform: Callable[[Batch], Batch],
    env: DistributedEnv,
    batch_size: int,
    auc_bins: Optional[int] = None,
) -> Dict[str, float]:
    """`ClickMetrics` of `model` on `split`, plus the teacher's AUC where the source has one.

    The batches go through TorchRec's pipeline with the model in eval mode (no backward, no
    optimizer step): on CUDA, batch i+1 is copied (from page-locked memory, without
    blocking) and its sparse input distributed while batch i is scored. `auc_bins` set,
    the AUCs are the bounded-memory binned ones (`trainer.auc=binned`).
    """
    was_training = model.training
    model.eval()
    metrics = ClickMetrics(env.device, auc_bins)
    teacher_auc = auc_metric(auc_bins).to(env.device)
    has_teacher = False

    def split_batches() -> Iterator[Batch]:
        """The rank's batches, host-side; the teacher's AUC is scored here, from the rows."""
        nonlocal has_teacher
        for rows in rank_rows(source, split, batch_size, env.rank, env.world_size, drop_last=False):
            batch = transform(rows_to_batch(rows, source.sparse_names))
            if rows.teacher_logits is not None:
                has_teacher = True
                teacher_auc.update(_to_device(torch.from_numpy(rows.teacher_logits), env.device),
                                   _to_device(batch.labels, env.device).long())
            yield batch.pin_memory() if env.device.type == "cuda" else batch

    pipeline = TrainPipelineSparseDist(model, optimizer=None, device=env.device, execute_all_batches=True)
    iterator = split_batches()
    try:
        while True:
            _, logits, labels = pipeline.progress(iterator)
            metrics.update(logits, labels)
    except StopIteration:
        pass
    finally:
        pipeline.detach()  # restores the model's own forward
    model.train(was_training)
    result = metrics.compute()
    if has_teacher:
        result["teacher_auc"] = teacher_auc.compute().item()
    return result


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, copied without blocking where the memory allows it."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)

"""Keeps the console to what a user needs: library chatter known to be harmless is dropped,
every other warning is kept."""

import logging
import warnings
from pathlib import Path


def _not_data_parallel_table_warning(record: logging.LogRecord) -> bool:
    # TorchRec warns once per data-parallel table that it has no sharding spec and no
    # cache: both are true by design.
    message = record.getMessage()
    return not (message.startswith("Sharding spec not found") or message.endswith("caching params will be ignored"))


def quiet_library_noise() -> None:
    """Silences warnings that libraries emit on every run and that a user cannot act on."""
    logging.getLogger().addFilter(_not_data_parallel_table_warning)
    logging.getLogger("torchrec.distributed.utils").addFilter(_not_data_parallel_table_warning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torchrec\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"fbgemm_gpu\..*")
    # TorchRec 1.8 shards tables as ShardedTensors, which torch warns are deprecated wherever one is touched.
    warnings.filterwarnings("ignore", message="Please use DTensor instead and we are deprecating ShardedTensor",
                            category=FutureWarning)
    # TorchRec's train pipeline traces the model with torch.fx, which logs a warning.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    # torchmetrics trims the predictions it gathers from ranks holding different numbers of
    # rows with a list of slices, which torch warns will mean something else from 2.9 on; the
    # trim is right on this torch (tests/train/test_metrics.py checks uneven splits).
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            module=r"torchmetrics\..*")
    # launch/evaluate.py and launch/export.py load a checkpoint in one process on purpose.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized",
                            module=r"torch\.distributed\.checkpoint\..*")


def configure_worker_logging(run_dir: Path, rank: int, job: str = "train") -> None:
    """Logging for ranks started by ctr's own launcher, where Hydra's set-up does not reach.

    Mirrors `configs/config.yaml`: ctr's messages at INFO on rank 0's console, every
    rank's log in `<job>_rank<r>.log`, libraries at WARNING.
    """
    formatter = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    file_handler = logging.FileHandler(run_dir / f"{job}_rank{rank}.log")
    handlers: list = [file_handler]
    if rank == 0:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=logging.WARNING, handlers=handlers, force=True)
    logging.getLogger("ctr").setLevel(logging.INFO)

"""Per-rank batching: which rows of a split each rank reads at each step.

Rows are addressed by their global index, so the same data set, split into
`world_size` ranks of `batch_size` rows, gives every step the same global rows whatever
the world size: step s covers rows [s·W·B, (s+1)·W·B), rank r reads the r-th share.
This is what lets N-rank training be checked against 1-rank training row for row.

Training batches (`train_batches`) come from a background thread, or from
`reader_workers` worker processes of a PyTorch DataLoader, so that reading, hashing and
building the KeyedJaggedTensor never hold the training thread's interpreter lock. Worker
w of W builds steps w, w+W, ..., and the DataLoader hands them over round-robin, so the
batches arrive in step order whatever W is.
"""

import queue
import threading
from typing import Callable, Iterator, Protocol, Sequence, Tuple

import torch.utils.data
from torchrec.datasets.utils import Batch

from ctr.data.rows import Rows, rows_to_batch


class RowSource(Protocol):
    """Anything that can return a contiguous range of a split's rows."""

    dense_names: Sequence[str]
    sparse_names: Sequence[str]

    def num_rows(self, split: str) -> int: ...

    def rows(self, split: str, start: int, stop: int, epoch: int = 0) -> Rows:
        """`epoch` picks the train split's shuffled order (sources without a shuffle ignore it)."""


def rank_ranges(
    num_rows: int, batch_size: int, rank: int, world_size: int, drop_last: bool, start_step: int = 0
) -> Iterator[Tuple[int, int]]:
    """Yields this rank's [start, stop) row range for each step from `start_step` on.

    A final partial step is dropped (`drop_last`, for training, so every step has equal
    shares) or split as evenly as possible across ranks (for evaluation, so every row is
    scored exactly once). Every rank yields the same number of ranges, since each step
    is a collective.
    """
    step_rows = batch_size * world_size
    full_steps, remainder = divmod(num_rows, step_rows)
    for step in range(start_step, full_steps):
        start = step * step_rows + rank * batch_size
        yield start, start + batch_size
    if remainder and not drop_last and start_step <= full_steps:
        if remainder < world_size:
            raise ValueError(
                f"{remainder} trailing rows cannot give each of {world_size} ranks a row; "
                "choose a batch size or row count that leaves at least one row per rank"
            )
        base = full_steps * step_rows
        share, extra = divmod(remainder, world_size)
        start = base + rank * share + min(rank, extra)
        yield start, start + share + (1 if rank < extra else 0)


def rank_rows(
    source: RowSource,
    split: str,
    batch_size: int,
    rank: int,
    world_size: int,
    drop_last: bool,
    start_step: int = 0,
) -> Iterator[Rows]:
    """Yields this rank's rows of `split`, one block per step, from `start_step` on."""
    for start, stop in rank_ranges(source.num_rows(split), batch_size, rank, world_size, drop_last, start_step):
        yield source.rows(split, start, stop)


def batches(
    source: RowSource,
    split: str,
    batch_size: int,
    rank: int,
    world_size: int,
    drop_last: bool,
    start_step: int = 0,
) -> Iterator[Batch]:
    """Yields this rank's TorchRec batches of `split`, in step order, from `start_step` on."""
    for rows in rank_rows(source, split, batch_size, rank, world_size, drop_last, start_step):
        yield rows_to_batch(rows, source.sparse_names)


def num_steps(num_rows: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """How many steps `rank_ranges` yields."""
    full, remainder = divmod(num_rows, batch_size * world_size)
    return full + (1 if remainder and not drop_last else 0)


def train_drops_last(num_rows: int, batch_size: int, world_size: int) -> bool:
    """Training keeps the last partial step, split across ranks as evaluation splits it,
    unless it cannot give every rank a row (every rank must take part in each step of the
    sharded model); only then are its rows (fewer than `world_size`) left out."""
    return num_rows % (batch_size * world_size) < world_size


def train_steps_per_epoch(num_rows: int, batch_size: int, world_size: int) -> int:
    return num_steps(num_rows, batch_size, world_size, train_drops_last(num_rows, batch_size, world_size))


class TrainBatches(torch.utils.data.IterableDataset):
    """This rank's training batches from global step `start_step` to `total_steps`, across
    epochs (each epoch in its own shuffled order), each passed through `transform`. In a
    DataLoader's worker w of W, only steps w, w+W, ... (see the module docstring)."""

    def __init__(self, source: RowSource, transform: Callable[[Batch], Batch], batch_size: int, rank: int,
                 world_size: int, start_step: int, total_steps: int) -> None:
        self._source, self._transform = source, transform
        self._batch_size, self._rank, self._world_size = batch_size, rank, world_size
        self._start_step, self._total_steps = start_step, total_steps
        num_rows = source.num_rows("train")
        self._drop_last = train_drops_last(num_rows, batch_size, world_size)
        self._steps_per_epoch = num_steps(num_rows, batch_size, world_size, self._drop_last)

    def __iter__(self) -> Iterator[Batch]:
        worker = torch.utils.data.get_worker_info()
        first, stride = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for step in range(self._start_step + first, self._total_steps, stride):
            yield self._transform(self.batch(step))

    def batch(self, step: int) -> Batch:
        """The untransformed batch of global step `step`."""
        epoch, in_epoch = divmod(step, self._steps_per_epoch)
        num_rows = self._source.num_rows("train")
        start, stop = next(rank_ranges(num_rows, self._batch_size, self._rank, self._world_size, self._drop_last,
                                       in_epoch))
        return rows_to_batch(self._source.rows("train", start, stop, epoch=epoch), self._source.sparse_names)


def train_batches(dataset: TrainBatches, workers: int, pin_memory: bool) -> Iterator[Batch]:
    """The dataset's batches in step order: from a background thread (`workers=0`) or from
    `workers` DataLoader processes; in page-locked memory when `pin_memory` (CUDA), so the
    pipeline's copy to the device runs asynchronously."""
    if workers < 0:
        raise ValueError(f"trainer.reader_workers={workers}: expected >= 0 (0: a background thread)")
    if workers == 0:
        return prefetch(batch.pin_memory() if pin_memory else batch for batch in dataset)
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                            prefetch_factor=2))


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Runs `iterator` in a background thread, `depth` items ahead of the consumer.

    Batch generation (NumPy, which releases the GIL) then overlaps the training step.
    An exception in the producer is re-raised in the consumer.
    """
    items: "queue.Queue" = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                items.put(item)
        except BaseException as error:  # noqa: BLE001 - handed over to the consumer
            items.put(error)
        items.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while True:
        item = items.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item

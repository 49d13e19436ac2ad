"""Per-rank batching: which rows of a split each rank reads at each step.

Rows are addressed by their global index, so the same data set, split into
`world_size` ranks of `batch_size` rows, gives every step the same global rows whatever
the world size: step s covers rows [s·W·B, (s+1)·W·B), rank r reads the r-th share.
This is what lets N-rank training be checked against 1-rank training row for row.
"""

import queue
import threading
from typing import Iterator, Protocol, Sequence, Tuple

from torchrec.datasets.utils import Batch

from ctr.data.rows import Rows, rows_to_batch


class RowSource(Protocol):
    """Anything that can return a contiguous range of a split's rows."""

    dense_names: Sequence[str]
    sparse_names: Sequence[str]

    def num_rows(self, split: str) -> int: ...

    def rows(self, split: str, start: int, stop: int) -> Rows: ...


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

"""Preprocessing cut into parts that many processes write into one shard directory.

A source cuts its input into parts that depend on the input and its settings only
(Criteo: `part_bytes` of a file, a gzipped file whole), never on how many processes run,
so the shards, their order and meta.json (apart from `last_run`) are the same for any
number of workers and ranks. Worker w of W writes parts w, w+W, w+2W, ...: the W
processes are `workers=N` local processes started by torch.multiprocessing, or the ranks
of a torchrun job (all nodes writing to one shared directory, torch.distributed barriers
ordering the steps).

Each part is written into `progress.parts/<part>/` with its own resumable state (the
shard writer's `ShardState`), and leaves `done.json` when finished. Once every part is
done, one process renumbers the parts' shards in part order, merges their statistics
(sums, maxima, and the mergeable sketches of `ctr.data.sketches`, in part order) and
writes meta.json last. A run interrupted anywhere resumes, with any number of workers:
finished parts are kept, unfinished ones continue from their last shard (or start over,
for a source that cannot resume inside a part), and the merge can be repeated.

A source whose rows cannot be written before every row was seen once (a CSV split by
time, train-only statistics: `PlannedInput`) gets a first pass the same way: each worker
scans its parts (`progress.parts/<part>/scan.npz`), worker 0 merges the scans in part
order into a plan (`progress.parts/plan.npz`), and every worker writes its parts knowing
the plan. Barriers (torch.distributed's under torchrun, a multiprocessing barrier between
local workers) order the steps; scans and the plan are kept until the run ends, so a
resumed run skips what was already scanned or planned.
"""

import functools
import json
import logging
import multiprocessing
import os
import time
from abc import abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch.distributed as dist
import torch.multiprocessing
from tqdm import tqdm

from ctr.atomic import write_atomic, write_json_atomic
from ctr.data.shard_format import META_FILE, read_meta, shard_file
from ctr.data.shard_writer import (CHUNK_ROWS, EXAMPLES_KEPT, PART_DIGITS, PART_DONE, PART_SCAN, PARTS_DIR,
                                   PARTS_FINGERPRINT, PARTS_PLAN, SHARD_ROWS, BadRowPolicy, ShardInput, ShardState,
                                   ShardWriter, input_fingerprint, part_files, prepare_output, remove_files,
                                   write_blocks, write_meta, written_files)

log = logging.getLogger(__name__)

PART_BYTES = 256 * 2**20
# A 1TB job's ranks finish their shares at different times; the barrier waits for the last.
_BARRIER_TIMEOUT = timedelta(hours=24)


class PartedInput(ShardInput):
    """A source that can be cut into parts, each read by a source of its own."""

    @abstractmethod
    def parts(self) -> List[Any]:
        """The parts, in reading order; they depend on the input and settings only."""

    @abstractmethod
    def for_part(self, index: int) -> ShardInput:
        """This source, reading part `index` only."""

    @abstractmethod
    def merged_position(self, positions: Sequence[dict]) -> dict:
        """The parts' own statistics (`ShardState.source`) merged, in part order."""


Arrays = Dict[str, np.ndarray]


class PlannedInput(PartedInput):
    """A parted source that reads every part once (`scan`) before writing any: the scans,
    merged in part order (`plan`), decide what the parts write (`planned`)."""

    @abstractmethod
    def scan(self, index: int) -> Arrays:
        """What the plan needs of part `index` (plain arrays: they are saved without pickle);
        "records" holds how many records it has, for the progress bar."""

    @abstractmethod
    def plan(self, scans: List[Arrays]) -> Arrays:
        """Every part's scan, in part order, merged into what writing the parts needs."""

    @abstractmethod
    def planned(self, plan: Arrays) -> "PlannedInput":
        """This source, knowing the plan (before `for_part` or `meta`)."""


Opener = Callable[[BadRowPolicy, int, int], PartedInput]
Sync = Callable[[], Any]


@dataclass(frozen=True)
class Part:
    """Lines of one input file whose first byte lies in [start, stop) (stop None: to the end)."""

    file_index: int
    start: int
    stop: Optional[int]


def byte_parts(paths: Sequence[Path], part_bytes: int, whole: Callable[[Path], bool]) -> List[Part]:
    """Every file cut every `part_bytes` (a file `whole` says so of: one part), in reading order."""
    parts = []
    for index, path in enumerate(paths):
        if whole(path):
            parts.append(Part(index, 0, None))
            continue
        size = path.stat().st_size
        bounds = list(range(0, size, part_bytes)) + [size]
        parts.extend(Part(index, start, stop) for start, stop in zip(bounds, bounds[1:]))
    return parts


def to_line_start(stream, start: int) -> int:
    """Bytes from `start` to the first line beginning at or after it (0 at a file's start)."""
    if start == 0:
        return 0
    stream.seek(start - 1)
    return len(stream.readline()) - 1


def newlines_before(path: Path, stop: int, block: int = 1 << 24) -> int:
    """How many lines of `path` end before byte `stop` (a line number, counted when an error needs it)."""
    with open(path, "rb") as stream:
        count, read = 0, 0
        while read < stop:
            data = stream.read(min(block, stop - read))
            if not data:
                break
            count += data.count(b"\n")
            read += len(data)
        return count


def write_parts(open_source: Opener, output: str, on_bad_row: str = BadRowPolicy.error, shard_rows: int = SHARD_ROWS,
                chunk_rows: int = CHUNK_ROWS, overwrite: bool = False, progress_bar: bool = True,
                workers: int = 1) -> dict:
    """Writes a parted source as shards in `output` with `workers` processes (or every torchrun rank);
    returns the meta.json content, or the existing one at once when `output` already holds this
    input's shards. `open_source(on_bad_row, shard_rows, chunk_rows)` opens the source (checking its
    input) once these settings are checked; it must pickle (spawned workers open it themselves)."""
    if shard_rows < 1 or chunk_rows < 1:
        raise ValueError(f"shard_rows={shard_rows}, chunk_rows={chunk_rows}: both must be >= 1")
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    policy = BadRowPolicy(on_bad_row)
    source = open_source(policy, shard_rows, chunk_rows)
    fingerprint = input_fingerprint(source.inputs, source.settings)
    out = Path(output)
    share = functools.partial(_write_share, open_source, policy, shard_rows, chunk_rows, fingerprint, out,
                              progress_bar=progress_bar)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if workers > 1:
            raise ValueError(f"workers={workers} under torchrun: every rank is one worker; leave workers=1 and "
                             "set torchrun's --nproc_per_node")
        return _as_rank(source, fingerprint, out, overwrite, share)
    done = _prepare(out, fingerprint, overwrite)
    if done is not None:
        return done
    started, wall = time.perf_counter(), time.time()
    if workers == 1:
        share(0, 1, lambda: None)
    else:
        # Only a source with a first pass waits at it; a dead worker makes the parent end the others.
        barrier = multiprocessing.get_context("spawn").Barrier(workers)
        torch.multiprocessing.start_processes(_share_of_worker, (share, workers, barrier), nprocs=workers,
                                              start_method="spawn")
    return _merge(source, fingerprint, out, started, wall)


def _share_of_worker(worker: int, share: Callable[[int, int, Sync], None], workers: int, barrier) -> None:
    share(worker, workers, barrier.wait)


def _as_rank(source: PartedInput, fingerprint: str, out: Path, overwrite: bool,
             share: Callable[[int, int, Sync], None]) -> dict:
    """This torchrun rank's share; rank 0 readies the directory first and merges last."""
    dist.init_process_group("gloo", timeout=_BARRIER_TIMEOUT)
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        started, wall = time.perf_counter(), time.time()
        if rank == 0:
            _prepare(out, fingerprint, overwrite)
        dist.barrier()
        if (out / META_FILE).exists():
            return _finished(out, fingerprint)
        if _read_fingerprint(out) != fingerprint:
            raise FileExistsError(f"rank 0 did not ready {out} for this input; see its error")
        share(rank, world_size, dist.barrier)
        dist.barrier()
        if rank == 0:
            _merge(source, fingerprint, out, started, wall)
        dist.barrier()
        return _finished(out, fingerprint)
    finally:
        dist.destroy_process_group()


def _finished(out: Path, fingerprint: str) -> dict:
    meta = read_meta(out)
    if meta.get("fingerprint") != fingerprint:
        raise FileExistsError(f"{out} holds shards of another input or configuration; pass overwrite=true")
    return meta


def _prepare(out: Path, fingerprint: str, overwrite: bool) -> Optional[dict]:
    """The existing meta when `out` is complete for this input; else readies `out` (resuming an
    unfinished run of the same input)."""
    parts = out / PARTS_DIR
    if not overwrite and parts.is_dir() and not (out / META_FILE).exists():
        if _read_fingerprint(out) != fingerprint:
            raise FileExistsError(
                f"{out} holds an unfinished run over another input or configuration; pass overwrite=true to start over"
            )
        log.info("resuming %s: %d parts already done", out, len(list(parts.glob(f"*/{PART_DONE}"))))
        return None
    done = prepare_output(out, fingerprint, overwrite)  # overwrite removes the parts layout too (`written_files`)
    if done is None:
        parts.mkdir()
        write_atomic(parts / PARTS_FINGERPRINT, lambda f: f.write(fingerprint.encode()))
    else:  # a merge interrupted after writing meta.json
        remove_files(out, part_files(out))
    return done


def _read_fingerprint(out: Path) -> Optional[str]:
    path = out / PARTS_DIR / PARTS_FINGERPRINT
    return path.read_text() if path.is_file() else None


def _part_dir(out: Path, part: int) -> Path:
    return out / PARTS_DIR / f"{part:0{PART_DIGITS}d}"


def _write_share(open_source: Opener, policy: BadRowPolicy, shard_rows: int, chunk_rows: int, fingerprint: str,
                 out: Path, worker: int, workers: int, sync: Sync, progress_bar: bool) -> None:
    """Writes parts worker, worker + workers, ... not done yet (after the first pass, where the source has one)."""
    source = open_source(policy, shard_rows, chunk_rows)
    mine = range(worker, len(source.parts()), workers)
    rss_at_start = _reset_peak_rss()
    show = progress_bar and worker == 0
    of = "" if workers == 1 else f" (worker 0 of {workers})"
    if isinstance(source, PlannedInput):
        source = _planned(source, out, mine, worker == 0, sync, tqdm(unit=" rows", unit_scale=True, disable=not show,
                                                                      desc=f"first pass{of}"))
    bar = tqdm(unit=" rows", unit_scale=True, disable=not show, desc=f"preprocess{of}")
    for index in mine:
        directory = _part_dir(out, index)
        if not (directory / PART_DONE).exists():
            _write_part(source.for_part(index), directory, shard_rows, fingerprint, bar.update, rss_at_start)
    bar.close()


def _planned(source: PlannedInput, out: Path, mine: range, lead: bool, sync: Sync, bar: tqdm) -> PlannedInput:
    """The first pass: this worker scans its parts not scanned yet; once every worker has, the lead merges
    the scans into the plan (unless an earlier run did); then every worker knows the plan."""
    plan = out / PARTS_DIR / PARTS_PLAN
    if not plan.exists():  # the same for every worker: the plan is written only between the two barriers below
        for index in mine:
            scan = _part_dir(out, index) / PART_SCAN
            if not scan.exists():
                scan.parent.mkdir(exist_ok=True)
                arrays = source.scan(index)
                write_atomic(scan, lambda f: np.savez(f, **arrays))
                bar.update(int(arrays["records"]))
        sync()
        if lead and not plan.exists():
            scans = [_load_arrays(_part_dir(out, index) / PART_SCAN) for index in range(len(source.parts()))]
            arrays = source.plan(scans)
            write_atomic(plan, lambda f: np.savez(f, **arrays))
        sync()
    bar.close()
    return source.planned(_load_arrays(plan))


def _load_arrays(path: Path) -> Arrays:
    with np.load(path) as saved:  # allow_pickle stays off: a saved scan cannot run code
        return dict(saved)


def _write_part(source: ShardInput, directory: Path, shard_rows: int, fingerprint: str,
                on_rows: Callable[[int], Any], rss_at_start: int) -> None:
    """One part's shards, continuing from its saved state; `done.json` marks it finished, with how far
    the worker's memory rose above its resident size before its first part."""
    directory.mkdir(exist_ok=True)
    for stale in directory.glob("*.tmp"):
        stale.unlink()
    if not source.resumable:  # the part starts over: its earlier shards must not linger, unlisted
        remove_files(directory, written_files(directory))
    state = ShardState(fingerprint, len(source.dense), len(source.sparse), source.start(), source.columns)
    state.load(directory)
    state.save(directory)  # before the first shard, so that its files are listed as ctr's if it is interrupted
    rows_before = state.rows
    writers = {split: ShardWriter(directory, source.columns, shard_rows, state, split) for split in source.splits}
    write_blocks(source, state, writers, on_rows)
    state.save(directory)
    write_json_atomic(directory / PART_DONE, {"rows_written": state.rows - rows_before, "finished_at": time.time(),
                                          "peak_rss_growth_bytes": _status_bytes("VmHWM") - rss_at_start})


def _merge(source: PartedInput, fingerprint: str, out: Path, started: float, wall_start: float) -> dict:
    """Renumbers every part's shards into `out` in part order, merges their statistics, writes meta.json."""
    if isinstance(source, PlannedInput):
        source = source.planned(_load_arrays(out / PARTS_DIR / PARTS_PLAN))
    merged = ShardState(fingerprint, len(source.dense), len(source.sparse))
    positions, rows_this_run, peak_rss = [], 0, 0
    for index in range(len(source.parts())):
        directory = _part_dir(out, index)
        if not (directory / PART_DONE).exists():
            raise RuntimeError(f"{directory} is unfinished although every worker returned; run again to resume")
        part = ShardState(fingerprint, len(source.dense), len(source.sparse))
        part.load(directory)
        _absorb(merged, part, directory, out, source.columns)
        positions.append(part.source)
        done = json.loads((directory / PART_DONE).read_text())
        if done["finished_at"] >= wall_start:
            rows_this_run += done["rows_written"]
            peak_rss = max(peak_rss, done["peak_rss_growth_bytes"])
    merged.source = source.merged_position(positions)
    meta = write_meta(out, source, fingerprint, merged, rows_this_run, time.perf_counter() - started,
                      parts=len(positions), peak_rss_growth_bytes_per_worker=peak_rss)
    remove_files(out, part_files(out))
    return meta


def _absorb(merged: ShardState, part: ShardState, directory: Path, out: Path, columns: Sequence[str]) -> None:
    """Adds a part's shards (moved into `out` under the next indices) and statistics to `merged`."""
    for shard in part.shards:
        index = len(merged.shards)
        for column in columns:
            moved = shard_file(directory, shard["index"], column)
            if moved.exists():  # else moved by an earlier, interrupted merge
                moved.replace(shard_file(out, index, column))
        merged.shards.append({**shard, "index": index})
    merged.rows += part.rows
    merged.positives += part.positives
    for kind, count in part.bad.items():
        merged.bad[kind] = merged.bad.get(kind, 0) + count
    merged.examples = (merged.examples + part.examples)[:EXAMPLES_KEPT]
    merged.missing = [a + b for a, b in zip(merged.missing, part.missing)]
    merged.dense_sum = [a + b for a, b in zip(merged.dense_sum, part.dense_sum)]
    merged.hll.merge(part.hll)
    merged.heavy.merge(part.heavy)


def _status_bytes(key: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key + ":"))


def _reset_peak_rss() -> int:
    """Resets this process's peak resident size (VmHWM) to its current size, which it returns: a
    worker's peak then measures its work, not its start-up (importing torch) or a forked parent's peak."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status_bytes("VmRSS")

"""One streaming pass from Criteo TSV to columnar shards: Criteo's blocks of rows and its
statistics for the shard writer (`ctr.data.shard_writer`), cut into parts that many
processes write at once (`ctr.data.parallel_preprocess`).

Memory stays bounded by one shard's rows (about 270 B × `shard_rows`) plus one block of
lines being parsed (about 4 KB × `chunk_rows`) per worker, whatever the input size. The
pass is resumable: each part saves its position (byte offset, line) with each shard.
"""

import copy
import functools
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from ctr.data import criteo, shard_writer
from ctr.data.parallel_preprocess import (PART_BYTES, Part, PartedInput, byte_parts, newlines_before, to_line_start,
                                         write_parts)
from ctr.data.shard_writer import Block, FileBlocks, Room, ShardState

_TOP_IDS = 10


def preprocess(
    input: str,
    output: str,
    on_bad_row: str = shard_writer.BadRowPolicy.error,
    log1p: bool = True,
    dense_columns: Optional[Sequence[str]] = None,
    sparse_columns: Optional[Sequence[str]] = None,
    shard_rows: int = shard_writer.SHARD_ROWS,
    chunk_rows: int = shard_writer.CHUNK_ROWS,
    overwrite: bool = False,
    progress_bar: bool = True,
    workers: int = 1,
    part_bytes: int = PART_BYTES,
) -> dict:
    """Turns the Criteo files at `input` into shards in `output`; returns the meta.json content.

    `on_bad_row` (`BadRowPolicy`): error stops at the first malformed line, naming file,
    line and problem; skip drops it and counts it. The input, the columns and the output
    directory are checked before any row is read. `workers` processes write the parts
    (`part_bytes` of a file each, a gzipped file whole); under torchrun every rank is one
    worker. The output is the same whatever the number of workers.
    """
    open_source = functools.partial(_CriteoInput, input, log1p, dense_columns, sparse_columns, part_bytes)
    return write_parts(open_source, output, on_bad_row, shard_rows, chunk_rows, overwrite, progress_bar, workers)


class _CriteoInput(PartedInput):
    """Criteo TSV files as blocks of rows, with the integer features' clamping and maxima counted."""

    name = "criteo"
    resumable = True
    error = criteo.CriteoFormatError

    def __init__(self, input: str, log1p: bool, dense_columns: Optional[Sequence[str]],
                 sparse_columns: Optional[Sequence[str]], part_bytes: int, policy: shard_writer.BadRowPolicy,
                 shard_rows: int, chunk_rows: int) -> None:
        if part_bytes < 1:
            raise ValueError(f"part_bytes={part_bytes}: must be >= 1")
        self.dense, self.sparse = criteo.check_columns(dense_columns, sparse_columns)
        self._files = criteo.discover(Path(input))
        self.input = self.description = str(input)
        self.inputs = [f.path for f in self._files]
        self.settings = {"on_bad_row": policy, "log1p": log1p, "dense": self.dense, "sparse": self.sparse,
                         "shard_rows": shard_rows, "part_bytes": part_bytes}
        self._parts = byte_parts(self.inputs, part_bytes, whole=lambda path: path.suffix == ".gz")
        self._part: Optional[Part] = None
        self._first_line: Optional[int] = None
        self.columns = ["label", *self.dense, *self.sparse]
        self._policy, self._log1p, self._chunk_rows = policy, log1p, chunk_rows
        self._dense_index = [criteo.DENSE.index(name) for name in self.dense]
        self._sparse_index = [criteo.SPARSE.index(name) for name in self.sparse]

    def parts(self) -> List[Part]:
        """Every file cut every `part_bytes` (a gzipped file whole), in reading order."""
        return self._parts

    def for_part(self, index: int) -> "_CriteoInput":
        source = copy.copy(self)
        source._part = self._parts[index]
        source._first_line = None if source._part.start else 1
        return source

    def start(self) -> Dict[str, object]:
        return {"offset": self._part.start, "line": 1, "negative": [0] * len(self.dense),
                "raw_max": [0] * len(self.dense), "shard_positives": []}

    def files(self, state: ShardState, room: Room) -> Iterator[FileBlocks]:
        file = self._files[self._part.file_index]
        yield file.path.name, file.day, self._blocks(file, state, room)

    def _blocks(self, file: criteo.CriteoFile, state: ShardState, room: Room) -> Iterator[Block]:
        """Parsed blocks from the saved position to the part's end; the position advances as lines are consumed."""
        position, stop = state.source, self._part.stop
        with criteo.open_binary(file.path) as stream:
            if position["offset"] == self._part.start:
                position["offset"] += to_line_start(stream, self._part.start)
            stream.seek(position["offset"])
            while True:
                count = min(self._chunk_rows, room(None))
                if stop is None:
                    lines, stream_error = criteo.read_lines(stream, count)
                else:
                    lines, stream_error = _lines_starting_before(stream, count, position["offset"], stop), None
                parsed = criteo.parse_lines(lines, position["line"], self._log1p)
                for problem in parsed.problems:
                    line = problem.line + self._lines_before(file.path) - 1
                    state.record_bad(file.path, problem._replace(line=line), self._policy, criteo.CriteoFormatError)
                if stream_error:
                    # The rows lost past the break cannot be counted, so no policy can account for them.
                    last_line = position["line"] + len(lines) - 1 + self._lines_before(file.path) - 1
                    raise criteo.CriteoFormatError(
                        f"{file.path}: {stream_error} after line {last_line}; the rest of the file cannot be read "
                        "or counted, so it is refused even under on_bad_row=skip: fetch the file again"
                    )
                _count_positives(position["shard_positives"], len(state.shards), parsed.labels)
                position["offset"] += sum(len(line) for line in lines)
                position["line"] += len(lines)
                yield self._block(parsed, position)
                if not lines:
                    return

    def _lines_before(self, path: Path) -> int:
        """The file's line number of the part's first line, counted once, when a bad line needs it."""
        if self._first_line is None:
            with open(path, "rb") as stream:
                first_byte = self._part.start + to_line_start(stream, self._part.start)
            self._first_line = 1 + newlines_before(path, first_byte)
        return self._first_line

    def _block(self, parsed: criteo.ParsedLines, position: dict) -> Block:
        """The kept columns of parsed lines; adds their clamped negatives and raw maxima to `position`."""
        dense = parsed.dense[:, self._dense_index]
        ids = parsed.ids[:, self._sparse_index]
        sparse_index = len(criteo.DENSE) + np.array(self._sparse_index, dtype=np.int64)
        position["negative"] = (np.array(position["negative"]) + parsed.negative[self._dense_index]).tolist()
        position["raw_max"] = np.maximum(position["raw_max"], parsed.raw_max[self._dense_index]).tolist()
        return Block(
            columns={"label": parsed.labels, **{n: dense[:, j] for j, n in enumerate(self.dense)},
                     **{n: ids[:, j] for j, n in enumerate(self.sparse)}},
            missing=np.concatenate([parsed.missing[self._dense_index], parsed.missing[sparse_index]]),
            dense_sum=dense.sum(0, dtype=np.float64),
        )

    def merged_position(self, positions: Sequence[dict]) -> dict:
        """Clamped negatives summed, raw maxima maximised, shard positives listed in part order (as
        the merge renumbers the shards)."""
        return {"negative": np.sum([p["negative"] for p in positions], 0, dtype=np.int64).tolist(),
                "raw_max": np.max([p["raw_max"] for p in positions], 0).tolist(),
                "shard_positives": [count for p in positions for count in p["shard_positives"]]}

    def meta(self, state: ShardState) -> dict:
        position, top, rows = state.source, state.heavy.top(_TOP_IDS), state.rows
        return {
            "files": [{"name": f.path.name, "day": f.day, "bytes": f.path.stat().st_size} for f in self._files],
            "shard_positives": position["shard_positives"],
            "stats": {
                "label": {"positives": state.positives, "positive_rate": state.positives / rows},
                "dense": {name: {"negative_clamped": position["negative"][j], "max_raw": position["raw_max"][j]}
                          for j, name in enumerate(self.dense)},
                "sparse": {name: {"top_ids": [{"id": i, "count_at_least": c} for i, c in top[j]]}
                           for j, name in enumerate(self.sparse)},
                "top_ids_count_error_at_most": state.heavy.error_bound(),
            },
        }


def _lines_starting_before(stream, count: int, offset: int, stop: int) -> List[bytes]:
    """Up to `count` lines from `offset` whose first byte lies before `stop`."""
    lines = []
    while len(lines) < count and offset < stop:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        offset += len(line)
    return lines


def _count_positives(counts: list, shard: int, labels: np.ndarray) -> None:
    """Adds a block's positives to its shard's count (a block never spans shards: it is cut to the
    shard's room), so that any split of whole shards is counted without reading it
    (`ShardSource.split_counts`)."""
    if len(labels):  # an empty block (the end of the input) names no shard
        counts.extend([0] * (shard + 1 - len(counts)))
        counts[shard] += int(labels.sum())

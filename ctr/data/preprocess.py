"""One streaming pass from Criteo TSV to columnar shards: Criteo's blocks of rows and its
statistics for the shard writer (`ctr.data.shard_writer`).

Memory stays bounded by one shard's rows (about 270 B × `shard_rows`) plus one block of
lines being parsed (about 4 KB × `chunk_rows`), whatever the input size. The pass is
resumable: the position in the input (file, byte offset, line) is saved with each shard.
"""

from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import numpy as np

from ctr.data import criteo, shard_writer
from ctr.data.shard_writer import Block, FileBlocks, Room, ShardInput, ShardState

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
) -> dict:
    """Turns the Criteo files at `input` into shards in `output`; returns the meta.json content.

    `on_bad_row` (`BadRowPolicy`): error stops at the first malformed line, naming file,
    line and problem; skip drops it and counts it. The input, the columns and the output
    directory are checked before any row is read.
    """
    return shard_writer.write_shards(lambda *settings: _CriteoInput(input, log1p, dense_columns, sparse_columns, *settings),
                                     output, on_bad_row, shard_rows, chunk_rows, overwrite, progress_bar)


class _CriteoInput(ShardInput):
    """Criteo TSV files as blocks of rows, with the integer features' clamping and maxima counted."""

    name = "criteo"
    resumable = True
    error = criteo.CriteoFormatError

    def __init__(self, input: str, log1p: bool, dense_columns: Optional[Sequence[str]],
                 sparse_columns: Optional[Sequence[str]], policy: shard_writer.BadRowPolicy, shard_rows: int,
                 chunk_rows: int) -> None:
        self.dense, self.sparse = criteo.check_columns(dense_columns, sparse_columns)
        self._files = criteo.discover(Path(input))
        self.input = self.description = str(input)
        self.inputs = [f.path for f in self._files]
        self.settings = {"on_bad_row": policy, "log1p": log1p, "dense": self.dense, "sparse": self.sparse,
                         "shard_rows": shard_rows}
        self.columns = ["label", *self.dense, *self.sparse]
        self._policy, self._log1p, self._chunk_rows = policy, log1p, chunk_rows
        self._dense_index = [criteo.DENSE.index(name) for name in self.dense]
        self._sparse_index = [criteo.SPARSE.index(name) for name in self.sparse]

    def start(self) -> Dict[str, object]:
        return {"file_index": 0, "offset": 0, "line": 1, "negative": [0] * len(self.dense),
                "raw_max": [0] * len(self.dense), "shard_positives": []}

    def files(self, state: ShardState, room: Room) -> Iterator[FileBlocks]:
        position = state.source
        for file_index in range(position["file_index"], len(self._files)):
            file = self._files[file_index]
            yield file.path.name, file.day, self._blocks(file, state, room)
            position.update(file_index=file_index + 1, offset=0, line=1)

    def _blocks(self, file: criteo.CriteoFile, state: ShardState, room: Room) -> Iterator[Block]:
        """Parsed blocks from the saved position; the position advances as lines are consumed."""
        position = state.source
        with criteo.open_binary(file.path) as stream:
            stream.seek(position["offset"])
            while True:
                lines, stream_error = criteo.read_lines(stream, min(self._chunk_rows, room(None)))
                parsed = criteo.parse_lines(lines, position["line"], self._log1p)
                for problem in parsed.problems:
                    state.record_bad(file.path, problem, self._policy, criteo.CriteoFormatError)
                if stream_error:
                    # The rows lost past the break cannot be counted, so no policy can account for them.
                    raise criteo.CriteoFormatError(
                        f"{file.path}: {stream_error} after line {position['line'] + len(lines) - 1}; the rest of "
                        "the file cannot be read or counted, so it is refused even under on_bad_row=skip: "
                        "fetch the file again"
                    )
                _count_positives(position["shard_positives"], len(state.shards), parsed.labels)
                position["offset"] += sum(len(line) for line in lines)
                position["line"] += len(lines)
                yield self._block(parsed, position)
                if not lines:
                    return

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


def _count_positives(counts: list, shard: int, labels: np.ndarray) -> None:
    """Adds a block's positives to its shard's count (a block never spans shards: it is cut to the
    shard's room), so that any split of whole shards is counted without reading it
    (`ShardSource.split_counts`)."""
    counts.extend([0] * (shard + 1 - len(counts)))
    counts[shard] += int(labels.sum())

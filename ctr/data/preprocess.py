"""One streaming pass from Criteo TSV to columnar shards (see `ctr.data.shards` for the layout).

The output side (`prepare_output`, `ShardState`, `ShardWriter`, `write_atomic`) also serves
the CSV sources (`ctr.data.tabular`).

Memory stays bounded by one shard's rows (about 270 B × `shard_rows`) plus one block of
lines being parsed (about 4 KB × `chunk_rows`), whatever the input size. Every file is written under a temporary name
and renamed when complete; after each shard the position in the input and the running
statistics are saved (`progress.npz`), so a run started again after an interruption
continues from the last complete shard. `meta.json` is written last: until it exists,
readers refuse the directory.
"""

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ctr.atomic import write_atomic, write_json_atomic
from ctr.data import criteo
from ctr.data.shard_format import FORMAT, META_FILE, data_sha256, read_meta, shard_file
from ctr.data.sketches import HeavyHitters, HyperLogLog

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.npz"
_POLICIES = ("error", "skip")
_EXAMPLES_KEPT = 20
_TOP_IDS = 10


def preprocess(
    input: str,
    output: str,
    on_bad_row: str = "error",
    log1p: bool = True,
    dense_columns: Optional[Sequence[str]] = None,
    sparse_columns: Optional[Sequence[str]] = None,
    shard_rows: int = 262_144,
    chunk_rows: int = 16_384,
    overwrite: bool = False,
    progress_bar: bool = True,
) -> dict:
    """Turns the Criteo files at `input` into shards in `output`; returns the meta.json content.

    `on_bad_row`: "error" stops at the first malformed line, naming file, line and problem;
    "skip" drops it and counts it (by kind) in meta.json and the log. The input, the
    columns and the output directory are checked before any row is read.
    """
    if on_bad_row not in _POLICIES:
        raise ValueError(f"on_bad_row={on_bad_row!r}: expected one of {list(_POLICIES)}")
    if shard_rows < 1 or chunk_rows < 1:
        raise ValueError(f"shard_rows={shard_rows}, chunk_rows={chunk_rows}: both must be >= 1")
    dense, sparse = criteo.check_columns(dense_columns, sparse_columns)
    files = criteo.discover(Path(input))
    settings = {"on_bad_row": on_bad_row, "log1p": log1p, "dense": dense, "sparse": sparse, "shard_rows": shard_rows}
    fingerprint = input_fingerprint([f.path for f in files], settings)
    out = Path(output)
    done = prepare_output(out, fingerprint, overwrite)
    if done is not None:
        log.info("%s already holds these shards (%d rows); nothing to do", out, done["num_rows"])
        return done

    state = ShardState.load(out, fingerprint, len(dense), len(sparse))
    if state.rows:
        log.info("resuming %s after %d rows in %d shards", out, state.rows, len(state.shards))
    writer = ShardWriter(out, ["label", *dense, *sparse], shard_rows, state)
    dense_index = [criteo.DENSE.index(name) for name in dense]
    sparse_index = [criteo.SPARSE.index(name) for name in sparse]
    started, rows_before = time.perf_counter(), state.rows
    bar = tqdm(initial=state.rows, unit=" rows", unit_scale=True, disable=not progress_bar, desc="preprocess")
    for file_index in range(state.file_index, len(files)):
        file = files[file_index]
        for parsed in _read_file(file, state, chunk_rows, writer.room, log1p, on_bad_row):
            writer.add(_criteo_columns(parsed, dense, sparse, dense_index, sparse_index, state))
            bar.update(len(parsed.labels))
            if not writer.room():
                writer.flush(file.path.name, file.day)
        writer.flush(file.path.name, file.day)
        state.next_file()
        state.save(out)
    bar.close()
    if not state.rows:
        raise criteo.CriteoFormatError(f"{input}: no valid rows ({sum(state.bad.values())} bad rows skipped); nothing written")
    seconds = time.perf_counter() - started
    meta = _meta(input, files, fingerprint, settings, state, dense, sparse)
    meta["last_run"] = {"rows": state.rows - rows_before, "seconds": round(seconds, 3),
                        "rows_per_second": round((state.rows - rows_before) / max(seconds, 1e-9))}
    write_json_atomic(out / META_FILE, meta)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    _log_summary(out, meta)
    return meta


def input_fingerprint(paths: Sequence[Path], settings: dict) -> str:
    """Identifies the input files (name, size, mtime) and every setting that changes the output."""
    listing = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps([FORMAT, listing, settings]).encode()).hexdigest()


def prepare_output(out: Path, fingerprint: str, overwrite: bool) -> Optional[dict]:
    """Returns the existing meta when `out` is already complete for this input; else readies `out`."""
    if overwrite and out.exists():
        # meta.json goes first, so the directory is invalid while anything else is removed.
        for pattern in (META_FILE, PROGRESS_FILE, "*.npy", "*.tmp"):
            for path in out.glob(pattern):
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if (out / META_FILE).exists():
        meta = read_meta(out)
        if meta.get("fingerprint") == fingerprint:
            return meta
        raise FileExistsError(f"{out} holds shards of another input or configuration; pass overwrite=true to replace them")
    progress = out / PROGRESS_FILE
    if progress.exists():
        if str(np.load(progress)["fingerprint"]) != fingerprint:
            raise FileExistsError(
                f"{out} holds an unfinished run over another input or configuration; pass overwrite=true to start over"
            )
    elif any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no shards; choose an empty directory or pass overwrite=true")
    for stale in out.glob("*.tmp"):
        stale.unlink()
    return None


@dataclass
class ShardState:
    """Everything needed to continue: the input position, the shards written, the running statistics."""

    fingerprint: str
    num_dense: int
    num_sparse: int
    file_index: int = 0
    offset: int = 0
    line: int = 1
    rows: int = 0
    shards: List[dict] = field(default_factory=list)
    bad: Dict[str, int] = field(default_factory=dict)
    examples: List[str] = field(default_factory=list)
    positives: int = 0
    missing: List[int] = field(default_factory=list)
    negative: List[int] = field(default_factory=list)
    raw_max: List[int] = field(default_factory=list)
    dense_sum: List[float] = field(default_factory=list)
    hll: Optional[HyperLogLog] = None
    heavy: Optional[HeavyHitters] = None

    def __post_init__(self) -> None:
        self.hll = self.hll or HyperLogLog(self.num_sparse)
        self.heavy = self.heavy or HeavyHitters(self.num_sparse)
        self.missing = self.missing or [0] * (self.num_dense + self.num_sparse)
        self.negative = self.negative or [0] * self.num_dense
        self.raw_max = self.raw_max or [0] * self.num_dense
        self.dense_sum = self.dense_sum or [0.0] * self.num_dense

    _SCALARS = ("file_index", "offset", "line", "rows", "shards", "bad", "examples", "positives",
                "missing", "negative", "raw_max", "dense_sum")

    @classmethod
    def load(cls, out: Path, fingerprint: str, num_dense: int, num_sparse: int) -> "ShardState":
        state = cls(fingerprint, num_dense, num_sparse)
        path = out / PROGRESS_FILE
        if path.exists():
            saved = np.load(path)
            for name, value in json.loads(str(saved["scalars"])).items():
                setattr(state, name, value)
            state.hll.registers = saved["hll"]
            state.heavy.load_state({k[len("heavy_"):]: saved[k] for k in saved.files if k.startswith("heavy_")})
        return state

    def save(self, out: Path) -> None:
        scalars = json.dumps({name: getattr(self, name) for name in self._SCALARS})
        arrays = {f"heavy_{k}": v for k, v in self.heavy.state().items()}
        write_atomic(
            out / PROGRESS_FILE,
            lambda f: np.savez(f, fingerprint=self.fingerprint, scalars=scalars, hll=self.hll.registers, **arrays),
        )

    def next_file(self) -> None:
        self.file_index, self.offset, self.line = self.file_index + 1, 0, 1

    def record_bad(self, path: Path, bad: criteo.BadLine) -> None:
        self.bad[bad.kind] = self.bad.get(bad.kind, 0) + 1
        if len(self.examples) < _EXAMPLES_KEPT:
            self.examples.append(f"{path}:{bad.line}: {bad.message}")


def _read_file(file: criteo.CriteoFile, state: ShardState, chunk_rows: int, room: Callable[[], int],
               log1p: bool, on_bad_row: str):
    """Yields parsed blocks from the saved position, enforcing the bad-row policy.

    `state.offset`/`state.line` advance as lines are consumed; blocks are cut to `room()`
    so that no shard grows past `shard_rows`.
    """
    with criteo.open_binary(file.path) as stream:
        stream.seek(state.offset)
        while True:
            lines, stream_error = criteo.read_lines(stream, min(chunk_rows, room()))
            parsed = criteo.parse_lines(lines, state.line, log1p)
            bad = list(parsed.problems)
            if stream_error:
                bad.append(criteo.BadLine(state.line + len(lines), "truncated gzip", stream_error))
            for problem in bad:
                if on_bad_row == "error":
                    raise criteo.CriteoFormatError(f"{file.path}:{problem.line}: {problem.message}")
                state.record_bad(file.path, problem)
            state.offset += sum(len(line) for line in lines)
            state.line += len(lines)
            yield parsed
            if stream_error or not lines:
                return


def _criteo_columns(parsed: criteo.ParsedLines, dense: List[str], sparse: List[str], dense_index: List[int],
                    sparse_index: List[int], state: ShardState) -> Dict[str, np.ndarray]:
    """The kept columns of parsed Criteo lines, by name; adds their Criteo statistics to `state`."""
    dense_values = parsed.dense[:, dense_index]
    ids = parsed.ids[:, sparse_index]
    missing = np.concatenate([parsed.missing[dense_index],
                              parsed.missing[len(criteo.DENSE) + np.array(sparse_index, dtype=np.int64)]])
    state.missing = (np.array(state.missing) + missing).tolist()
    state.negative = (np.array(state.negative) + parsed.negative[dense_index]).tolist()
    state.raw_max = np.maximum(state.raw_max, parsed.raw_max[dense_index]).tolist()
    state.dense_sum = (np.array(state.dense_sum) + dense_values.sum(0, dtype=np.float64)).tolist()
    state.hll.update(ids)
    state.heavy.update(ids)
    return {"label": parsed.labels, **{n: dense_values[:, j] for j, n in enumerate(dense)},
            **{n: ids[:, j] for j, n in enumerate(sparse)}}


class ShardWriter:
    """Buffers up to `shard_rows` rows of the named columns; writes them as one shard and saves the state.

    `split` tags every shard it writes, for sources whose preprocessing decides the split.
    """

    def __init__(self, out: Path, columns: List[str], shard_rows: int, state: ShardState,
                 split: Optional[str] = None) -> None:
        self._out, self._columns, self._shard_rows, self._state = out, columns, shard_rows, state
        self._split = split
        self._blocks: List[Dict[str, np.ndarray]] = []

    def room(self) -> int:
        return self._shard_rows - sum(len(block["label"]) for block in self._blocks)

    def add(self, block: Dict[str, np.ndarray]) -> None:
        """Buffers a block of rows: every column by name, "label" included."""
        self._blocks.append(block)
        self._state.rows += len(block["label"])
        self._state.positives += int(block["label"].sum())

    def flush(self, file: str, day: Optional[int] = None) -> None:
        """Writes the buffered rows as the next shard (if any), then saves the state."""
        rows = sum(len(block["label"]) for block in self._blocks)
        if not rows:
            return
        blocks, self._blocks = self._blocks, []
        index = len(self._state.shards)
        checksums = {}
        # One column at a time, so writing adds one column's copy to the buffered rows.
        for name in self._columns:
            values = np.concatenate([block[name] for block in blocks])
            write_atomic(shard_file(self._out, index, name), lambda f: np.save(f, values))
            checksums[name] = data_sha256(values)
        shard = {"index": index, "rows": rows, "file": file, "day": day, "sha256": checksums}
        if self._split is not None:
            shard["split"] = self._split
        self._state.shards.append(shard)
        self._state.save(self._out)
        log.info("shard %d: %d rows from %s", index, rows, file)


def _meta(input: str, files: Sequence[criteo.CriteoFile], fingerprint: str, settings: dict, state: ShardState,
          dense: List[str], sparse: List[str]) -> dict:
    rows = state.rows
    top = state.heavy.top(_TOP_IDS)
    distinct = state.hll.estimates()
    return {
        "format": FORMAT,
        "source": "criteo",
        "input": str(input),
        "files": [{"name": f.path.name, "day": f.day, "bytes": f.path.stat().st_size} for f in files],
        "fingerprint": fingerprint,
        "settings": settings,
        "label": "label",
        "dense": dense,
        "sparse": sparse,
        "columns": ["label", *dense, *sparse],
        "dtypes": {"label": "float32", "dense": "float32", "sparse": "int64"},
        "num_rows": rows,
        "shards": state.shards,
        "bad_rows": {"total": sum(state.bad.values()), "by_kind": state.bad, "examples": state.examples},
        "stats": {
            "label": {"positives": state.positives, "positive_rate": state.positives / rows if rows else None},
            "dense": {
                name: {"missing": state.missing[j], "negative_clamped": state.negative[j], "max_raw": state.raw_max[j],
                       "mean": state.dense_sum[j] / rows if rows else None}
                for j, name in enumerate(dense)
            },
            "sparse": {
                name: {"missing": state.missing[len(dense) + j], "distinct_estimate": distinct[j],
                       "top_ids": [{"id": i, "count_at_least": c} for i, c in top[j]]}
                for j, name in enumerate(sparse)
            },
            "top_ids_count_error_at_most": state.heavy.error_bound(),
        },
    }


def _log_summary(out: Path, meta: dict) -> None:
    bad = meta["bad_rows"]
    log.info("%s: %d rows in %d shards (this run: %d rows/s)", out, meta["num_rows"], len(meta["shards"]),
             meta["last_run"]["rows_per_second"])
    if bad["total"]:
        log.warning("skipped %d bad rows: %s; first: %s", bad["total"], bad["by_kind"], bad["examples"][:3])

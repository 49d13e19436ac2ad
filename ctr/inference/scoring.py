"""Batch scoring: raw files of the training layout → one prediction per row, in input order.

The reading process cuts each input into chunks of `batch_size` rows and hands them to
`workers` scoring processes (or scores them itself, for one worker), at most two chunks
per worker in flight, and writes the results in input order: memory is bounded by the
batch size, whatever the input's size. The output has exactly one line per input row: a
row that does not parse (on_bad_row=skip) is written with an empty prediction and
counted; the rows read and the rows written are compared before the output is renamed
into place.
"""

import csv
import json
import os
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from importlib.util import find_spec
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ctr.data.shard_writer import BadLine, BadRowPolicy
from ctr.inference.pipeline import Chunk
from ctr.inference.predictor import Predictor, load, load_pipeline

_IN_FLIGHT_PER_WORKER = 2
_EXAMPLES_KEPT = 20
_PREDICTOR: Optional[Predictor] = None  # a scoring process's artifact, loaded once


def input_files(input: Path) -> List[Path]:
    """`input` itself, or the files of the directory `input` in name order."""
    if input.is_file():
        return [input]
    if input.is_dir():
        files = sorted(p for p in input.iterdir() if p.is_file() and not p.name.startswith("."))
        if files:
            return files
        raise FileNotFoundError(f"input={input}: a directory without files")
    raise FileNotFoundError(f"input={input} does not exist")


def _start_worker(artifact: str, threads: int) -> None:
    global _PREDICTOR
    torch.set_num_threads(threads)
    _PREDICTOR = load(artifact)


def _score(chunk: Chunk, keys: Sequence[str], on_bad_row: str,
           predictor: Optional[Predictor] = None) -> Tuple[np.ndarray, List[BadLine], List[List[str]]]:
    predictor = predictor or _PREDICTOR
    probabilities, problems = predictor.score(chunk, on_bad_row)
    return probabilities, problems, predictor.pipeline.keys(chunk, keys) if keys else [[]] * len(chunk.records)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.suffix not in (".csv", ".tsv"):
        hint = "; Parquet would need pyarrow, which is not installed" if find_spec("pyarrow") is None else ""
        raise ValueError(f"output={output}: expected a .csv or .tsv file{hint}")
    if output.exists() and not overwrite:
        raise FileExistsError(f"output={output} exists; pass overwrite=true to replace it")


def score_files(artifact: Path, input: Path, output: Path, keys: Sequence[str] = (),
                on_bad_row: str = BadRowPolicy.error, batch_size: int = 4096, workers: int = 1,
                overwrite: bool = False) -> dict:
    """Scores every row of `input` (a file or a directory of them) with `artifact` into
    `output` (columns: `keys`, then `prediction`); returns the summary it also writes to
    `<output>.summary.json`."""
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size={batch_size}, workers={workers}: both must be at least 1")
    files = input_files(Path(input))
    _check_output(output, overwrite)
    predictor = load(artifact) if workers == 1 else None
    pipeline = predictor.pipeline if predictor else load_pipeline(artifact)
    chunks = (chunk for path in files for chunk in pipeline.chunks(path, batch_size))
    tmp = output.with_name(output.name + ".partial")
    read = written = 0
    bad: Counter = Counter()
    examples: List[str] = []
    try:
        with open(tmp, "w", newline="") as stream:
            writer = csv.writer(stream, delimiter="\t" if output.suffix == ".tsv" else ",")
            writer.writerow([*keys, "prediction"])
            for chunk, (probabilities, problems, key_values) in _scored(chunks, artifact, keys, on_bad_row, workers,
                                                                         predictor):
                read += len(chunk.records)
                for problem in problems:
                    bad[problem.kind] += 1
                    if len(examples) < _EXAMPLES_KEPT:
                        examples.append(f"{chunk.origin}:{problem.line}: {problem.message}")
                writer.writerows([*k, "" if np.isnan(p) else f"{p:.9g}"] for k, p in zip(key_values, probabilities))
                written += len(probabilities)
        if written != read:
            raise RuntimeError(f"output={output}: {written} predictions for {read} input rows; nothing was written")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    summary = {"artifact": str(artifact), "input": [str(f) for f in files], "output": str(output),
               "rows": read, "written": written, "scored": read - sum(bad.values()), "bad_rows": dict(bad),
               "bad_row_examples": examples, "on_bad_row": str(on_bad_row), "workers": workers,
               "batch_size": batch_size}
    output.with_name(output.name + ".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _scored(chunks: Iterator[Chunk], artifact: Path, keys: Sequence[str], on_bad_row: str, workers: int,
            predictor: Optional[Predictor]) -> Iterator[Tuple[Chunk, tuple]]:
    """(chunk, its scores) in input order, scored here or by `workers` processes."""
    if predictor is not None:
        for chunk in chunks:
            yield chunk, _score(chunk, keys, on_bad_row, predictor)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker,
                             initargs=(str(artifact), threads)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(_score, chunk, keys, on_bad_row)))
            if len(pending) >= workers * _IN_FLIGHT_PER_WORKER:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()

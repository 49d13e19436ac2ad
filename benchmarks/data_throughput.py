"""Is the data pipeline ever the bottleneck? Preprocessing rows/s and reader samples/s vs training.

    .venv/bin/python benchmarks/data_throughput.py [--rows 500000] [--input <criteo file or dir>] [--reader-workers 0 1 2]

Writes Criteo TSV (generated, or `--input`), preprocesses it, streams the train split
through one rank's training reader (shuffled, TorchRec batches) with each number of
reader worker processes, then trains the default model (`launch/train.py data=criteo`,
2 ranks under torchrun) on the same shards for a few steps, all in the same run on the
same machine. The reader should be at least 5× faster than training per rank; the
projection says how many reader workers a GPU rank training at 150k samples/s would need.
Results go to `--out` as JSON, and a Markdown table to stdout.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctr.data.preprocess import preprocess
from ctr.data.reader import TrainBatches, train_batches, train_steps_per_epoch
from ctr.data.shards import ShardSource

REPO = Path(__file__).resolve().parents[1]


def write_criteo_tsv(path: Path, num_rows: int, seed: int = 0, block_rows: int = 50_000) -> None:
    """Criteo-shaped lines with Zipf-distributed categoricals and ~10% empty fields."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for start in range(0, num_rows, block_rows):
            n = min(block_rows, num_rows - start)
            labels = (rng.random(n) < 0.25).astype(int).astype(str)
            ints = rng.geometric(0.05, (n, 13)).astype(str)
            cats = np.char.mod("%08x", rng.zipf(1.2, (n, 26)) % (1 << 32))
            columns = np.concatenate([labels[:, None], ints, cats], axis=1)
            columns[rng.random(columns.shape) < 0.1] = ""
            columns[:, 0] = labels
            f.write("\n".join("\t".join(row) for row in columns.tolist()) + "\n")


def reader_samples_per_second(shards: Path, batch_size: int, workers: int) -> float:
    """Rank 0 of 2's training reader, alone: rows shuffled as by default → TorchRec batches, over its share
    of the train split, from `workers` processes (0: the background thread)."""
    source = ShardSource(str(shards))
    steps = train_steps_per_epoch(source.num_rows("train"), batch_size, 2)
    dataset = TrainBatches(source, _unchanged, batch_size, 0, 2, 0, steps)
    start, samples = time.perf_counter(), 0
    for batch in train_batches(dataset, workers, pin_memory=False):
        samples += batch.labels.numel()
    return samples / (time.perf_counter() - start)


def _unchanged(batch):
    return batch


def training_samples_per_second(shards: Path, steps: int, run_dir: Path) -> dict:
    """The default model and trainer settings, 2 ranks, on the same shards."""
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "launch/train.py",
               "data=criteo", f"data.path={shards}", f"trainer.max_steps={steps}", "trainer.progress_bar=false",
               f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"training failed:\n{proc.stderr[-3000:]}")
    return json.loads((run_dir / "metrics.json").read_text())


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    return {
        "cpu": cpu, "cpu_vector_flags": sorted(f for f in flags if f.startswith(("avx", "sse4", "amx", "fma"))),
        "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # The allocator moved CPU throughput 2-3x in one early measurement, so report what was in effect.
        "allocator": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
        or "glibc malloc, default settings",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000, help="rows to generate (ignored with --input)")
    parser.add_argument("--input", type=Path, help="Criteo TSV file or directory to use instead of generated rows")
    parser.add_argument("--batch-size", type=int, default=2048, help="reader batch size (training: its default)")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--reader-workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "data_throughput.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.input
        if source is None:
            source = tmp / "train.txt"
            write_criteo_tsv(source, args.rows)
        meta = preprocess(str(source), str(tmp / "shards"), progress_bar=False)
        readers = {w: reader_samples_per_second(tmp / "shards", args.batch_size, w) for w in args.reader_workers}
        trained = training_samples_per_second(tmp / "shards", args.train_steps, tmp / "run")

    training = trained["train_samples_per_second"] / 2
    with_workers = [w for w in readers if w]
    per_worker = max(readers[w] / w for w in with_workers) if with_workers else readers[0]
    result = {
        "input": str(args.input or f"generated, {args.rows} rows"),
        "rows": meta["num_rows"],
        "preprocess_rows_per_second": meta["last_run"]["rows_per_second"],
        "reader_samples_per_second_per_rank": {w: round(r) for w, r in readers.items()},
        "training_samples_per_second_per_rank": round(training),
        "reader_over_training": {w: round(r / training, 1) for w, r in readers.items()},
        "reader_workers_for_150k_samples_per_second": math.ceil(150_000 / per_worker),
        "train_steps": trained["train_steps"],
        "load_average_at_end": os.getloadavg(),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| stage | throughput |\n| --- | ---: |")
    print(f"| preprocess (1 process) | {result['preprocess_rows_per_second']:,} rows/s |")
    for workers, rate in result["reader_samples_per_second_per_rank"].items():
        print(f"| reader, rank 0 of 2, {workers} workers (shuffled, batch {args.batch_size}) | {rate:,} samples/s "
              f"({result['reader_over_training'][workers]}x training; needs >= 5x) |")
    print(f"| training, default model (per rank of 2) | {result['training_samples_per_second_per_rank']:,} samples/s |")
    print(f"| reader workers a GPU rank at 150k samples/s needs | {result['reader_workers_for_150k_samples_per_second']} |")
    print(f"\n{json.dumps(result['machine'])}\nload average {result['load_average_at_end']}\nwritten to {args.out}")


if __name__ == "__main__":
    main()

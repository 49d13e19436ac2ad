"""In-process latency of an exported artifact per request, and batch-scoring throughput.

For a trained run: exports it with fp32, int8 and int4 tables (dense tower fp32), then
  - latency: `ctr.inference.load(artifact).predict(rows)` on dict rows built from raw Criteo
    lines (parsing, hashing and the model: the whole request), p50 and p99 over `--requests`
    requests at each batch size, precisions measured back to back;
  - sizes: each artifact's bytes next to the training checkpoint's;
  - throughput: rows/s of `ctr.inference.scoring.score_files` (what launch/predict.py runs) on
    raw Criteo text, end to end (artifact load and process start included), 1 and 2 processes.

    python benchmarks/inference_latency.py --run-dir <criteo training run> --raw <Criteo TSV file>
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.throughput import machine  # noqa: E402
from ctr.inference import load  # noqa: E402
from ctr.inference.pipeline import CriteoPipeline  # noqa: E402
from ctr.inference.scoring import score_files  # noqa: E402
from ctr.train.export import export, load_trained  # noqa: E402

PRECISIONS = ("fp32", "int8", "int4")


def _dict_rows(raw: Path, count: int) -> list:
    """`count` rows as a service would send them: column → text, no label (repeats the file if short)."""
    lines = raw.read_text().splitlines()
    columns = CriteoPipeline.COLUMNS
    return [dict(zip(columns[1:], lines[i % len(lines)].split("\t")[1:])) for i in range(count)]


def _latency_ms(predictor, rows: list, batch_size: int, requests: int, warmup: int) -> dict:
    times = []
    for i in range(warmup + requests):
        start = (i * batch_size) % max(len(rows) - batch_size, 1)
        request = rows[start:start + batch_size]
        begin = time.perf_counter()
        predictor.predict(request)
        if i >= warmup:
            times.append((time.perf_counter() - begin) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "requests": requests}


def _checkpoint_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a training run on Criteo-layout data")
    parser.add_argument("--raw", type=Path, required=True, help="a raw Criteo TSV file to build requests from")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--throughput-copies", type=int, default=10, help="copies of --raw scored for throughput")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the latency process")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "inference_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "threads": args.threads, "run_dir": str(args.run_dir), "latency": {},
              "bytes": {}, "auc": {}, "throughput": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        predictors = {}
        for precision in PRECISIONS:
            trained = load_trained(args.run_dir)
            result["bytes"]["checkpoint"] = _checkpoint_bytes(trained.checkpoint)
            manifest = export(trained, precision, tmp / precision)
            result["bytes"][precision] = manifest["artifact_bytes"]
            result["auc"][precision] = manifest["metrics"]["auc"]
            predictors[precision] = load(tmp / precision)
        rows = _dict_rows(args.raw, max(args.batch_sizes) * 4)
        for batch_size in args.batch_sizes:
            for precision in PRECISIONS:  # back to back, so the ratios compare like with like
                result["latency"][f"{precision}/{batch_size}"] = _latency_ms(predictors[precision], rows, batch_size,
                                                                             args.requests, args.warmup)
                print(precision, batch_size, result["latency"][f"{precision}/{batch_size}"], flush=True)
        big = tmp / "raw.txt"
        big.write_text(args.raw.read_text() * args.throughput_copies)
        total = sum(1 for _ in open(big))
        for workers in args.workers:
            begin = time.perf_counter()
            summary = score_files(tmp / "int8", big, tmp / f"scores_{workers}.csv", workers=workers)
            seconds = time.perf_counter() - begin
            assert summary["written"] == total
            result["throughput"][f"int8/{workers}"] = {"rows": total, "seconds": seconds, "rows_per_s": total / seconds}
            print("throughput", workers, result["throughput"][f"int8/{workers}"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Does preprocessing scale with processes? Rows/s for 1 and 2 workers, and Criteo 1TB projected.

    .venv/bin/python benchmarks/preprocess_throughput.py [--copies 200] [--workers 1 2]

Replicates criteo-kaggle-10k (`--input`) `--copies` times into one file in a temporary
directory (200 copies: 2 million rows, 485 MB; never committed), preprocesses it with each
worker count back to back, and prints rows/s, the scaling efficiency against 1 worker, each
worker's memory rise (measured in the worker) and the wall time Criteo 1TB (~4.4e9 rows)
would take on 1 node x 16 cores and 8 nodes x 16 cores at the measured per-worker rate.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.data_throughput import machine
from ctr.data.preprocess import preprocess

REPO = Path(__file__).resolve().parents[1]
CRITEO_1TB_ROWS = 4.4e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path,
                        default=Path(os.environ.get("CTR_DATA_ROOT", REPO.parent / "shared" / "data"))
                        / "criteo-kaggle-10k" / "train-10k.txt")
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--part-bytes", type=int, default=32 * 2**20, help="parts of the one big file")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "benchmarks" / "preprocess_throughput.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, block = tmp / "train.txt", args.input.read_bytes()
        with open(data, "wb") as f:
            for _ in range(args.copies):
                f.write(block)
        runs = {}
        for workers in args.workers:
            meta = preprocess(str(data), str(tmp / f"out{workers}"), workers=workers, part_bytes=args.part_bytes,
                              progress_bar=False)
            runs[workers] = {"rows": meta["num_rows"], "parts": meta["last_run"]["parts"],
                             "seconds": meta["last_run"]["seconds"], "rows_per_second": meta["last_run"]["rows_per_second"],
                             "memory_rise_mb_per_worker": round(meta["last_run"]["peak_rss_growth_bytes_per_worker"] / 2**20, 1)}
    base = runs[args.workers[0]]["rows_per_second"] / args.workers[0]
    best = max(args.workers)
    per_worker = runs[best]["rows_per_second"] / best
    result = {
        "input": f"{args.input} x {args.copies}", "runs": runs,
        "scaling_efficiency": round(per_worker / base, 3),
        "projection_criteo_1tb_hours": {
            "1 node x 16 workers": round(CRITEO_1TB_ROWS / (16 * per_worker) / 3600, 2),
            "8 nodes x 16 workers": round(CRITEO_1TB_ROWS / (128 * per_worker) / 3600, 2),
        },
        "load_average_at_end": os.getloadavg(),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| workers | rows | parts | seconds | rows/s | memory rise per worker |\n|---:|---:|---:|---:|---:|---:|")
    for workers, run in runs.items():
        print(f"| {workers} | {run['rows']:,} | {run['parts']} | {run['seconds']} | {run['rows_per_second']:,} | "
              f"{run['memory_rise_mb_per_worker']} MB |")
    print(f"\nscaling efficiency ({best} workers vs {args.workers[0]}): {result['scaling_efficiency']}")
    print(f"Criteo 1TB at {per_worker:,.0f} rows/s per worker: {result['projection_criteo_1tb_hours']} hours")
    print(f"\n{json.dumps(result['machine'])}\nload average {result['load_average_at_end']}\nwritten to {args.out}")


if __name__ == "__main__":
    main()

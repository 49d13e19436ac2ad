"""Memory versus quality of the embedding options: hashing × table size × dim × storage
precision × export precision, and the step time of each comms precision.

    .venv/bin/python benchmarks/embedding_tradeoffs.py [--datasets criteo synthetic sparrowrecsys]

Each training configuration is a full 2-rank job through `launch/train.py` (CPU, gloo);
its table bytes (weights as stored, both ranks) and test AUC come from the run's
`metrics.json`. Exports quantize the tables of a trained run (int8/int4 row-wise, TorchRec's
quantized modules) and score the same test split in one process. Writes
`<out>/results.json`, `<out>/results.md` and `<out>/tradeoffs.png`. Real data must be
preprocessed first (`launch/preprocess.py`, `launch/preprocess.py data=sparrowrecsys`).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctr.parallel.process_group import DistributedEnv  # noqa: E402
from ctr.train.evaluate import evaluate  # noqa: E402
from ctr.train.export import export, load_exported, load_trained  # noqa: E402

# The same small dense tower everywhere: the tables are what is compared.
COMMON = ["model.num_residual_units=2", "model.residual_hidden_dim=64", "trainer.progress_bar=false",
          "trainer.tensorboard=false", "trainer.eval_batch_size=4096"]
DATASETS: Dict[str, List[str]] = {
    "criteo": ["data=criteo", "trainer.batch_size=256", "trainer.epochs=3"],
    "synthetic": ["data=synthetic", "data.train_rows=60000", "data.val_rows=4000", "data.test_rows=20000",
                  "data.vocab_max=20000", "trainer.batch_size=512", "trainer.epochs=2"],
    "sparrowrecsys": ["data=sparrowrecsys", "trainer.batch_size=512", "trainer.epochs=1"],
}
# name → overrides; N is the table size per feature (embedding.num_embeddings)
CONFIGS: Dict[str, List[str]] = {
    "modulo N=1k d=16": ["embedding.num_embeddings=1000", "embedding.dim=16"],
    "modulo N=10k d=16": ["embedding.num_embeddings=10000", "embedding.dim=16"],
    "modulo N=10k d=8": ["embedding.num_embeddings=10000", "embedding.dim=8"],
    "modulo N=10k d=rule(k=2)": ["embedding.num_embeddings=10000", "embedding.dim_rule.k=2", "embedding.dim_rule.max=32"],
    "modulo N=10k d=16 fp16": ["embedding.num_embeddings=10000", "embedding.dim=16", "embedding.precision=fp16"],
    "qr N=10k d=16": ["embedding.num_embeddings=10000", "embedding.dim=16", "embedding/hashing=qr"],
    "qr N=10k d=16 fp16": ["embedding.num_embeddings=10000", "embedding.dim=16", "embedding/hashing=qr",
                           "embedding.precision=fp16"],
    "vocab min_count=2 d=16": ["embedding.num_embeddings=10000", "embedding.dim=16", "embedding/hashing=vocab"],
}
EXPORTED = ("modulo N=10k d=16", "qr N=10k d=16")
EXPORT_PRECISIONS = ("int8", "int4")
COMMS = ("fp32", "fp16", "int8")


def _train(run_dir: Path, overrides: Sequence[str]) -> dict:
    if not (run_dir / "metrics.json").exists():
        proc = subprocess.run([sys.executable, "launch/train.py", *COMMON, *overrides, f"hydra.run.dir={run_dir}"],
                              cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if "Error: " in line]
            return {"error": errors[-1] if errors else f"exit code {proc.returncode}"}
    return json.loads((run_dir / "metrics.json").read_text())


def _row(dataset: str, name: str, export_precision: str, metrics: dict) -> dict:
    if "error" in metrics:
        return {"dataset": dataset, "config": name, "export": export_precision, "error": metrics["error"]}
    return {"dataset": dataset, "config": name, "export": export_precision,
            "table_bytes": metrics["table_bytes"], "test_auc": metrics["test_auc"]}


def _exported(run_dir: Path, precision: str) -> dict:
    out = run_dir / f"export_{precision}"
    summary = export(load_trained(run_dir), precision, out)
    trained = load_exported(out)
    env = DistributedEnv(0, 1, 0, 1, torch.device("cpu"), "none")
    metrics = evaluate(trained.task, trained.source, "test", trained.hashing, env, 4096)
    return {"table_bytes": summary["table_bytes"], "test_auc": metrics["auc"]}


def run_dataset(dataset: str, out: Path) -> List[dict]:
    rows = []
    for name, overrides in CONFIGS.items():
        run_dir = out / dataset / name.replace(" ", "_").replace("=", "").replace("(", "").replace(")", "")
        metrics = _train(run_dir, [*DATASETS[dataset], *overrides])
        metrics.setdefault("table_bytes", metrics.get("embedding_bytes"))
        rows.append(_row(dataset, name, "-", metrics))
        print(json.dumps(rows[-1]), flush=True)
        if name in EXPORTED and "error" not in metrics:
            for precision in EXPORT_PRECISIONS:
                rows.append(_row(dataset, name, precision, _exported(run_dir, precision)))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def run_comms(out: Path) -> List[dict]:
    """Train step time of each comms precision: synthetic data, 26 tables of dim 64, table-wise."""
    rows = []
    for precision in COMMS:
        metrics = _train(out / "comms" / precision, [*DATASETS["synthetic"], "trainer.epochs=1", "embedding.dim=64",
                                                    "embedding.num_embeddings=10000", f"comms={precision}",
                                                    "checkpoint.keep_best=false"])
        rows.append({"comms": precision, "ms_per_step": 1000 * metrics["train_seconds"] / metrics["train_steps"],
                     "samples_per_second": metrics["train_samples_per_second"], "test_auc": metrics["test_auc"],
                     "bytes_per_step": metrics["comms_bytes_per_step"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: List[dict], comms: List[dict]) -> str:
    lines = ["| data | config | export | table bytes | test AUC |", "|---|---|---|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['config']} | {r['export']} | failed: {r['error'][:160]} | |")
        else:
            lines.append(f"| {r['dataset']} | {r['config']} | {r['export']} | {r['table_bytes']:,} | {r['test_auc']:.4f} |")
    if comms:
        lines += ["", "| comms | ms/step | samples/s | pooled bytes sent/step (fwd+bwd) | test AUC |",
                  "|---|---:|---:|---:|---:|"]
        for c in comms:
            sent = c["bytes_per_step"]["forward"] + c["bytes_per_step"]["backward"]
            lines.append(f"| {c['comms']} | {c['ms_per_step']:.1f} | {c['samples_per_second']:.0f} | {sent:,} | "
                         f"{c['test_auc']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows if "error" not in r})
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(7 * max(len(datasets), 1), 5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in (r for r in rows if r["dataset"] == dataset and "error" not in r):
            label = r["config"] + ("" if r["export"] == "-" else f" → {r['export']}")
            ax.scatter(r["table_bytes"], r["test_auc"], marker="o" if r["export"] == "-" else "x")
            ax.annotate(label, (r["table_bytes"], r["test_auc"]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("embedding table bytes (log)")
        ax.set_ylabel("test AUC")
        ax.set_title(dataset)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["criteo", "synthetic", "sparrowrecsys"], choices=list(DATASETS))
    parser.add_argument("--no-comms", action="store_true", help="skip the comms step-time runs")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "embedding_tradeoffs")
    args = parser.parse_args()
    started = time.time()
    rows = [row for dataset in args.datasets for row in run_dataset(dataset, args.out)]
    comms = [] if args.no_comms else run_comms(args.out)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")} or "glibc default"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"machine": machine, "seconds": time.time() - started, "rows": rows, "comms": comms}, indent=2))
    (args.out / "results.md").write_text(markdown(rows, comms))
    plot(rows, args.out / "tradeoffs.png")
    print(markdown(rows, comms))


if __name__ == "__main__":
    main()

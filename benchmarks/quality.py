"""Model quality on the real data sets beside the repo: ctr's default settings (and a tuned
configuration) against a logistic-regression floor on the same split, over several seeds.

    .venv/bin/python benchmarks/quality.py                                  # everything below
    .venv/bin/python benchmarks/quality.py --data-root /data --datasets movielens100k_temporal --seeds 0
    .venv/bin/python benchmarks/quality.py --report                         # the tables again from quality.json

For each data set with a config (`configs/data/<name>.yaml`), each model and each seed
(`distributed.seed` and `data.seed`), it preprocesses the data once (into `--work`), trains
with `launch/train.py` on one rank, as a user would: the defaults, and `+experiment=<tuned>`,
the settings chosen for that data set on its validation split (never its test split). The
logistic regression (`benchmarks/logistic_baseline.py`) is fitted once per data set on the
same split and features (it starts from zero weights: seeds barely move it). Test AUC and log-loss are reported as mean ± standard deviation over the
seeds, with the standard error of an AUC on that test split (Hanley & McNeil 1982), so that a
difference can be told from noise. A finished run (its metrics.json) is not run again.
Results: `benchmarks/quality.json`, the `quality` section of `benchmarks/RESULTS.md` and the
quality table of `README.md`.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.logistic_baseline import fit as fit_logistic  # noqa: E402
from benchmarks.markdown_section import replace_section  # noqa: E402
from benchmarks.throughput import machine  # noqa: E402
from ctr.atomic import write_json_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
STORE = HERE / "quality.json"
MODELS = ("deep_crossing", "wide_deep")
MODEL_NAMES = {"deep_crossing": "Deep Crossing", "wide_deep": "Wide & Deep"}


class Dataset:
    """A data set of the benchmark: its data config, how its shards are made, its tuned
    experiment (None where the defaults already reach the targets) and the reference test
    AUCs of established libraries (issue 20)."""

    def __init__(self, config: str, source: str, tuned: Optional[str], targets: Dict[str, float], criteo: bool = False):
        self.config, self.source, self.tuned, self.targets, self.criteo = config, source, tuned, targets, criteo

    def preprocess_args(self, data_root: Path, shards: Path) -> List[str]:
        if self.criteo:
            return [f"input={data_root / self.source}", f"output={shards}"]
        return [f"data={self.config}", f"data.path={shards}"]


DATASETS = {
    d.config: d for d in (
        Dataset("sparrowrecsys", "sparrowrecsys", None,
                {"deep_crossing": 0.780, "wide_deep": 0.779, "logistic_regression": 0.775}),
        Dataset("movielens100k_temporal", "movielens-100k", "quality_movielens100k_temporal",
                {"deep_crossing": 0.697, "wide_deep": 0.697, "logistic_regression": 0.6925}),
        Dataset("criteo_kaggle10k", "criteo-kaggle-10k", None,
                {"deep_crossing": 0.726, "wide_deep": 0.726, "logistic_regression": 0.725}, criteo=True),
    )
}
VARIANTS = ("default", "tuned")


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982): the standard error of an AUC measured on `positives` and `negatives`.

    >>> round(auc_standard_error(0.7, 1000, 1000), 4)
    0.0116
    """
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc))
    return math.sqrt(variance / (positives * negatives))


def _run(cmd: Sequence[str], env: dict, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.run(list(cmd), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}; see {log}")


def _preprocess(dataset: Dataset, data_root: Path, work: Path, env: dict) -> Path:
    shards = work / "shards" / dataset.config
    if not (shards / "meta.json").exists():
        _run([sys.executable, "launch/preprocess.py", *dataset.preprocess_args(data_root, shards), "progress_bar=false",
              f"hydra.run.dir={work / 'preprocess' / dataset.config}"], env, work / "logs" / f"preprocess_{dataset.config}.log")
    return shards


def _train(dataset: Dataset, model: str, variant: str, seed: int, shards: Path, work: Path, env: dict) -> dict:
    run_dir = work / "runs" / variant / dataset.config / model / f"seed{seed}"
    if not (run_dir / "metrics.json").exists():
        experiment = [f"+experiment={dataset.tuned}"] if variant == "tuned" else []
        _run([sys.executable, "launch/train.py", f"data={dataset.config}", f"model={model}", *experiment,
              f"data.path={shards}", f"data.seed={seed}", f"distributed.seed={seed}", "distributed.nproc_per_node=1",
              "trainer.progress_bar=false", "trainer.tensorboard=false", "checkpoint.keep_last=1",
              f"hydra.run.dir={run_dir}"], env, run_dir.with_suffix(".log"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    return {
        "dataset": dataset.config, "model": model, "variant": variant, "seed": seed,
        "test_auc": metrics["test_auc"], "test_log_loss": metrics["test_log_loss"],
        "best_val_auc": metrics.get("best_val_auc"), "test_rows": test["rows"], "test_positives": test["positives"],
        "train_steps": metrics["train_steps"], "test_weights_step": metrics["test_weights_step"],
        "epochs_planned": metrics["epochs_planned"], "stopped_early": metrics["stopped_early"],
        "train_seconds": metrics["train_seconds"], "run_dir": str(run_dir),
    }


def _logistic(dataset: Dataset, seed: int, shards: Path, env: dict) -> dict:
    os.environ.update(env)  # the data configs read CTR_DATA_ROOT when composed
    result = fit_logistic([f"data={dataset.config}", f"data.path={shards}"], seed=seed)
    test = result["splits"]["test"]
    return {
        "dataset": dataset.config, "model": "logistic_regression", "variant": "default", "seed": seed,
        "test_auc": result["logistic_regression_test_auc"], "test_log_loss": result["logistic_regression_test_log_loss"],
        "best_val_auc": result["logistic_regression_val_auc"], "test_rows": test["rows"],
        "test_positives": test["positives"],
    }


def summarise(runs: List[dict]) -> List[dict]:
    """Mean ± sample standard deviation over seeds per (data set, model, variant), the AUC's
    standard error on the test split, and the distance to the target."""
    groups: Dict[tuple, List[dict]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["model"], run["variant"]), []).append(run)
    rows = []
    for (dataset, model, variant), group in groups.items():
        aucs, losses = [r["test_auc"] for r in group], [r["test_log_loss"] for r in group]
        auc = statistics.mean(aucs)
        positives = group[0]["test_positives"]
        target = DATASETS[dataset].targets.get(model)
        row = {
            "dataset": dataset, "model": model, "variant": variant, "seeds": [r["seed"] for r in group],
            "test_auc_mean": auc, "test_auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "test_log_loss_mean": statistics.mean(losses),
            "test_log_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "auc_standard_error": auc_standard_error(auc, positives, group[0]["test_rows"] - positives),
            "best_val_auc_mean": statistics.mean(r["best_val_auc"] for r in group) if group[0]["best_val_auc"] else None,
            "target": target, "target_gap": auc - target if target is not None else None,
            "test_rows": group[0]["test_rows"], "test_positives": positives,
        }
        if "train_steps" in group[0]:
            row["train_steps_mean"] = statistics.mean(r["train_steps"] for r in group)
            row["best_step_mean"] = statistics.mean(r["test_weights_step"] for r in group)
            row["train_seconds_mean"] = statistics.mean(r["train_seconds"] for r in group)
        rows.append(row)
    order = [*MODELS, "logistic_regression"]
    return sorted(rows, key=lambda r: (list(DATASETS).index(r["dataset"]), order.index(r["model"]), r["variant"]))


def _cell(row: dict, metric: str = "test_auc") -> str:
    mean = f"{row[metric + '_mean']:.4f}"
    return mean if len(row["seeds"]) == 1 else f"{mean} ± {row[metric + '_std']:.4f}"


def results_markdown(store: dict) -> str:
    """The RESULTS.md section: every (data set, model, variant), then how it was measured."""
    lines = [
        "| data set | model | settings | test AUC (mean ± std) | SE of AUC | test log-loss | target | vs target "
        "| val AUC | steps (best at) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in store["summary"]:
        gap = f"{r['target_gap']:+.4f}" if r["target_gap"] is not None else ""
        steps = f"{r['train_steps_mean']:.0f} ({r['best_step_mean']:.0f})" if "train_steps_mean" in r else ""
        val = f"{r['best_val_auc_mean']:.4f}" if r["best_val_auc_mean"] is not None else ""
        lines.append(
            f"| {r['dataset']} | {MODEL_NAMES.get(r['model'], 'logistic regression')} | {r['variant']} | {_cell(r)} "
            f"| {r['auc_standard_error']:.4f} | {_cell(r, 'test_log_loss')} "
            f"| {r['target'] if r['target'] is not None else ''} | {gap} | {val} | {steps} |"
        )
    m = store["machine"]
    lines += [
        "",
        f"Seeds {store['seeds']} (`distributed.seed` and `data.seed`), 1 rank, {m['cpu']} ({m['cores']} cores, "
        f"shared), {store['date']}. SE: the standard error of one AUC on that test split (Hanley & McNeil), "
        "for telling a difference from noise; steps: training steps run and the step of the best "
        "checkpoint, whose weights give the test metrics (means over seeds). `default`: the data config "
        "and the model's defaults; `tuned`: `+experiment=quality_<data set>`, chosen on validation AUC only.",
        "",
        "```",
        store["command"],
        "```",
    ]
    return "\n".join(lines)


def readme_markdown(store: dict) -> str:
    """The README's quality table: the default settings' test AUC per data set and model, with the floor."""
    cells = {(r["dataset"], r["model"], r["variant"]): r for r in store["summary"]}
    lines = [
        "| data set (test rows) | Deep Crossing | Wide & Deep | logistic regression | targets DC / W&D |",
        "|---|---|---|---|---|",
    ]
    for name, dataset in DATASETS.items():
        row = [cells.get((name, m, "default")) for m in (*MODELS, "logistic_regression")]
        if not any(row):
            continue
        rows = next(r for r in row if r)["test_rows"]
        shown = [(_cell(r) + (f" (SE {r['auc_standard_error']:.4f})" if i == 0 else "")) if r else "–"
                 for i, r in enumerate(row)]
        lines.append(f"| {name} ({rows:,}) | {' | '.join(shown)} | "
                     f"{dataset.targets['deep_crossing']} / {dataset.targets['wide_deep']} |")
    return "\n".join(lines)


def report(store_path: Path = STORE, results_md: Path = HERE / "RESULTS.md", readme: Path = REPO / "README.md") -> None:
    store = json.loads(store_path.read_text())
    replace_section(results_md, "quality", results_markdown(store), heading="## Model quality on real data (issue 20)")
    replace_section(readme, "quality", readme_markdown(store))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("CTR_DATA_ROOT", REPO.parent / "shared" / "data")))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "quality")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (OMP_NUM_THREADS)")
    parser.add_argument("--report", action="store_true", help="only render the tables from quality.json")
    args = parser.parse_args()
    if not args.report:
        # One thread per process: on a shared machine, more threads than free cores only wait for each other.
        env = {**os.environ, "CTR_DATA_ROOT": str(args.data_root.resolve()), "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": str(args.threads)}
        torch.set_num_threads(args.threads)
        runs = []
        for name in args.datasets:
            dataset = DATASETS[name]
            shards = _preprocess(dataset, args.data_root.resolve(), args.work.resolve(), env)
            runs.append(_logistic(dataset, args.seeds[0], shards, env))
            for seed in args.seeds:
                for model in args.models:
                    for variant in (v for v in args.variants if v == "default" or dataset.tuned):
                        runs.append(_train(dataset, model, variant, seed, shards, args.work.resolve(), env))
                        print(json.dumps({k: runs[-1][k] for k in ("dataset", "model", "variant", "seed", "test_auc")}),
                              flush=True)
        write_json_atomic(STORE, {
            "machine": machine(), "threads": args.threads, "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds,
            "command": "CTR_DATA_ROOT=<data root> .venv/bin/python benchmarks/quality.py " + " ".join(sys.argv[1:]),
            "runs": runs, "summary": summarise(runs),
        })
    report()
    print(results_markdown(json.loads(STORE.read_text())))


if __name__ == "__main__":
    main()

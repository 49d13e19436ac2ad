"""FNN (Zhang et al. 2016): Deep Crossing whose tables start from a trained Factorization
Machine's, against Deep Crossing from random initialisation, and with the pre-trained tables frozen.

    .venv/bin/python benchmarks/pretrained_fnn.py                      # both data sets, seeds 0 1 2
    .venv/bin/python benchmarks/pretrained_fnn.py --datasets movielens100k_temporal --seeds 0

Every run is `launch/train.py` on one rank (`distributed.nproc_per_node=1`), with the epochs,
validation cadence and early stopping given explicitly (no trainer default matters). Per data
set and seed (`distributed.seed`: the tables' and tower's initialisation; the data order is the
data config's): an FM (`model=fm`), then three Deep Crossing runs: `random` (its own
initialisation), `fm_init` (every table from the FM run's best checkpoint,
`embedding.init.<table>={checkpoint: <FM run>}`) and `fm_frozen` (the same, and every table
`embedding.update.<table>=frozen`). Reported per run: the test AUC at the end of training,
the best validation AUC, and the steps to reach the `random` run's best validation AUC (the
first validation at or above it; null if never). Writes `<output>` (JSON: every run's
figures and validation history) and prints a Markdown table of the means over seeds.
Data: shards from `python launch/preprocess.py data=<name>` (CTR_DATA_ROOT for the raw files).
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from throughput import machine  # this directory's

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctr.features.tables import named_tables  # noqa: E402
# Validation every this many steps: about 8 times per epoch at the data configs' batch 256
# (SparrowRecSys 39,689 training rows, 156 steps; MovieLens-100k temporal 72,000 rows, 282 steps).
EVAL_EVERY_STEPS = {"sparrowrecsys": 20, "movielens100k_temporal": 35}
VARIANTS = ("random", "fm_init", "fm_frozen")


def train(run_dir: Path, dataset: str, model: str, seed: int, epochs: int, overrides: List[str]) -> dict:
    """One `launch/train.py` run; its metrics.json plus the validation AUC after each evaluation."""
    command = [
        sys.executable, str(ROOT / "launch" / "train.py"), f"data={dataset}", f"model={model}",
        "distributed.nproc_per_node=1", f"distributed.seed={seed}", f"trainer.epochs={epochs}",
        f"trainer.eval_every_steps={EVAL_EVERY_STEPS[dataset]}", "trainer.early_stopping_patience=null",
        "trainer.max_steps=null", "trainer.progress_bar=false", "checkpoint.keep_best=true", f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    if not (run_dir / "metrics.json").is_file():
        log = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    history = [(event.step, event.value) for event in events.Scalars("val/auc")]
    return {"run_dir": str(run_dir), "test_auc": metrics["test_auc"], "best_val_auc": metrics["best_val_auc"],
            "train_steps": metrics["train_steps"], "initialised_rows": metrics.get("initialised_rows", {}),
            "val_auc": history}


def steps_to_reach(history: List[List[float]], target: float) -> Optional[int]:
    """The first validation step whose AUC is at least `target`.

    >>> steps_to_reach([(10, 0.6), (20, 0.71), (30, 0.7)], 0.7)
    20
    """
    return next((int(step) for step, auc in history if auc >= target), None)


def pretrained_tables(fm_run: Path) -> List[str]:
    """The FM run's embedding tables (its plan) by the names `embedding.init` takes, without its
    first-order (`wide_`) tables."""
    plan = json.loads((fm_run / "plan.json").read_text())
    return list(named_tables(row["table"] for row in plan["tables"]))


def one_seed(runs: Path, dataset: str, seed: int, epochs: int, fm_epochs: int) -> dict:
    fm_dir = runs / dataset / f"seed{seed}" / "fm"
    fm = train(fm_dir, dataset, "fm", seed, fm_epochs, [])
    tables = pretrained_tables(fm_dir)
    init = [f"+embedding.init.{t}={{checkpoint: {fm_dir}}}" for t in tables]
    frozen = [f"+embedding.update.{t}=frozen" for t in tables]
    overrides = {"random": [], "fm_init": init, "fm_frozen": init + frozen}
    results = {"fm": fm}
    for variant in VARIANTS:
        results[variant] = train(runs / dataset / f"seed{seed}" / variant, dataset, "deep_crossing", seed, epochs,
                                 overrides[variant])
    target = results["random"]["best_val_auc"]
    for variant in VARIANTS:
        results[variant]["steps_to_random_best_val_auc"] = steps_to_reach(results[variant]["val_auc"], target)
    return results


def _mean(values: List[Optional[float]], digits: int) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "never"
    text = f"{statistics.mean(present):.{digits}f}"
    if len(present) > 1:
        text += f" ± {statistics.stdev(present):.{digits}f}"
    return text + (f" ({len(values) - len(present)} never)" if len(present) < len(values) else "")


def table(results: Dict[str, Dict[int, dict]]) -> str:
    rows = ["| data | model | test AUC | best val AUC | steps to random's best val AUC | steps trained |",
            "|---|---|---|---|---|---|"]
    for dataset, seeds in results.items():
        for variant in ("fm", *VARIANTS):
            runs = [seeds[s][variant] for s in sorted(seeds)]
            steps = [r.get("steps_to_random_best_val_auc") for r in runs] if variant != "fm" else None
            rows.append(
                f"| {dataset} | {'FM' if variant == 'fm' else 'Deep Crossing, ' + variant} "
                f"| {_mean([r['test_auc'] for r in runs], 4)} | {_mean([r['best_val_auc'] for r in runs], 4)} "
                f"| {'' if steps is None else _mean(steps, 0)} | {_mean([r['train_steps'] for r in runs], 0)} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(EVAL_EVERY_STEPS), choices=list(EVAL_EVERY_STEPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1, help="Deep Crossing's epochs (the data configs' advice: 1)")
    parser.add_argument("--fm-epochs", type=int, default=3, help="the FM's epochs (its best checkpoint starts Deep Crossing)")
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "pretrained_fnn", help="run directories (reused if complete)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "pretrained_fnn.json")
    args = parser.parse_args()
    results = {d: {s: one_seed(args.runs, d, s, args.epochs, args.fm_epochs) for s in args.seeds} for d in args.datasets}
    report = {
        "machine": machine(),
        "settings": {"epochs": args.epochs, "fm_epochs": args.fm_epochs, "seeds": args.seeds, "ranks": 1,
                     "eval_every_steps": {d: EVAL_EVERY_STEPS[d] for d in args.datasets}, "early_stopping": None},
        "results": results,
        "table": table(results),
    }
    args.output.write_text(json.dumps(report, indent=2))
    print(report["table"])


if __name__ == "__main__":
    main()

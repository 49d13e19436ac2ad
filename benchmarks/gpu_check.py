"""Checks a GPU machine end to end in minutes, through ctr's own entry points.

    python benchmarks/gpu_check.py                    # every local GPU, all phases, < 8 min on 1-8 GPUs
    python benchmarks/gpu_check.py --phases 3 --cases row_wise_fp8 uvm_cache   # a part of it
    python benchmarks/gpu_check.py --cpu              # the CPU-runnable phases at tiny sizes (gloo)

Needs the pinned stack (`launch/setup.sh` on the GPU host). Writes one JSON per phase into
`--out` (default `outputs/gpu_check/<time>`), each with `status` ok or failed and, when
failed, the traceback (a subprocess's: the tail of its output, kept whole in its log):

0. versions: torch, CUDA, NCCL, torchrec, fbgemm; GPU model and HBM; CPU and host memory.
1. main job: the README's main job (`launch/train.py`) on all local GPUs with validation
   and checkpoints: test AUC against the teacher's, samples/s, seconds to the first step.
2. resume and export: a run stopped at a checkpoint and resumed (`checkpoint.resume=auto`),
   its GPU checkpoint evaluated on the CPU with no GPU visible (`launch/evaluate.py`), an
   int8 export (`launch/export.py`) and its evaluation.
3. matrix: short runs of each sharding type, comms precision and option that only a GPU
   runs; a failing case is recorded and the matrix goes on.
4. throughput: `benchmarks/throughput.py` at a GPU-sized point, against the plain baseline.

Every run is a subprocess of the real entry point; the process exits 1 when any phase failed.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.throughput import machine  # noqa: E402
from ctr.atomic import write_json_atomic  # noqa: E402
from ctr.parallel.hardware import host_memory_bytes  # noqa: E402

# Tiny sizes for --cpu: a job of seconds on one gloo rank.
CPU_SIZES = [
    "data.num_dense=4", "data.num_sparse=6", "data.vocab_min=5", "data.vocab_max=300", "data.train_rows=640",
    "data.val_rows=64", "data.test_rows=256", "embedding.dim=8", "embedding.num_embeddings=200",
    "model.num_residual_units=1", "model.residual_hidden_dim=16", "trainer.batch_size=32",
    "trainer.eval_batch_size=64", "trainer.epochs=1",
]
# Short GPU runs (phases 2 and 3): enough steps to exercise every path, not to converge.
GPU_BATCH, GPU_STEPS_PER_EPOCH = 2048, 40
QUIET = ["trainer.progress_bar=false", "trainer.tensorboard=false"]
# A log's tail kept in the phase JSON when a run fails.
TAIL_CHARS = 4000


@dataclass(frozen=True)
class Case:
    """One short run of the matrix: `overrides` of launch/train.py; `cpu` whether gloo runs it."""

    overrides: Sequence[str]
    cpu: bool = False


CASES: Dict[str, Case] = {
    "table_wise_fp16": Case(["sharding=table_wise", "comms=fp16"], cpu=True),
    "row_wise_bf16": Case(["sharding=row_wise", "comms=bf16"]),
    "table_row_wise_int8": Case(["sharding=table_row_wise", "comms=int8"]),
    "column_wise_fp8": Case(["sharding=column_wise", "comms=fp8"]),
    "row_wise_fp8": Case(["sharding=row_wise", "comms=fp8"]),  # TorchRec sends fp16/bf16: said at start-up
    "sparse_adam": Case(["optimizer.sparse=adam"]),
    "fp16_tables_bf16_tower": Case(["embedding.precision=fp16", "trainer.dense_precision=bf16"], cpu=True),
    "wide_deep": Case(["model=wide_deep"], cpu=True),
    "sharding_auto": Case(["sharding=auto"], cpu=True),
    # FBGEMM's CPU kernel ignores table L2, so ctr refuses it on CPU: this is its only run.
    "table_l2_row_wise": Case(["model=wide_deep", "sharding=row_wise", "optimizer.sparse_weight_decay=1e-5"]),
    "fm_frozen_row_wise": Case(["model=fm", "sharding=row_wise", "+embedding.update.cat_0=frozen"]),
    # 2M rows per table behind a cache of 5 % of them: lookups miss and the prefetch pipeline fills the cache.
    "uvm_cache": Case(["sharding=uvm_caching", "sharding.cache_load_factor=0.05", "embedding.num_embeddings=2000000",
                       "data.vocab_max=2000000"]),
}


class PhaseFailed(Exception):
    """A phase that failed with partial results worth keeping (the matrix's other cases)."""

    def __init__(self, message: str, results: dict) -> None:
        super().__init__(message)
        self.results = results


class RunFailed(Exception):
    """A subprocess exited non-zero; the message is the tail of its output."""


@dataclass
class Check:
    """Where the check writes and how it runs each entry point."""

    out: Path
    cpu: bool
    nproc: int
    timeout: float

    def env(self, gpu_visible: bool = True) -> dict:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        if self.cpu or not gpu_visible:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def run(self, name: str, script: str, args: Sequence[str], gpu_visible: bool = True) -> Path:
        """Runs `script` with `args`, its output in `<out>/<name>.log`; raises RunFailed with its tail."""
        log = self.out / f"{name}.log"
        command = [sys.executable, str(REPO / script), *args]
        with log.open("w") as handle:
            handle.write(" ".join(command) + "\n")
            handle.flush()
            code = subprocess.run(command, cwd=REPO, env=self.env(gpu_visible), stdout=handle,
                                  stderr=subprocess.STDOUT, timeout=self.timeout).returncode
        if code:
            raise RunFailed(f"{script} exited {code} (whole log: {log}):\n{log.read_text()[-TAIL_CHARS:]}")
        return log

    def train(self, name: str, overrides: Sequence[str], run_dir: Optional[Path] = None) -> dict:
        """A launch/train.py job in `run_dir` (default `<out>/<name>`), logged to `<out>/<name>.log`; its metrics.json."""
        run_dir = run_dir or self.out / name
        backend = ["distributed.backend=gloo"] if self.cpu else []
        self.run(name, "launch/train.py", [f"distributed.nproc_per_node={self.nproc}", *backend, *QUIET,
                                           *overrides, f"hydra.run.dir={run_dir}"])
        return json.loads((run_dir / "metrics.json").read_text())

    @property
    def sizes(self) -> List[str]:
        """The short runs' sizes: 40 steps an epoch however many ranks (20 on --cpu)."""
        if self.cpu:
            return CPU_SIZES
        rows = GPU_BATCH * self.nproc * GPU_STEPS_PER_EPOCH
        return [f"data.train_rows={rows}", "data.val_rows=20000", "data.test_rows=20000", f"trainer.batch_size={GPU_BATCH}"]


def versions(check: Check) -> dict:
    """Phase 0: the software and hardware the figures below come from."""
    gpus = [
        {"index": i, "name": torch.cuda.get_device_name(i),
         "hbm_bytes": torch.cuda.get_device_properties(i).total_memory}
        for i in range(torch.cuda.device_count())
    ] if not check.cpu else []
    return {
        **machine(), "python": sys.version.split()[0], "torch_cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if gpus else None,
        "gpus": gpus, "host_memory_bytes": host_memory_bytes(), "ranks": check.nproc,
    }


def main_job(check: Check) -> dict:
    """Phase 1: the README's main job (full size on GPUs), validating and checkpointing every 50 steps."""
    sizes = CPU_SIZES + ["trainer.eval_every_steps=10", "checkpoint.every_steps=10"] if check.cpu \
        else ["trainer.eval_every_steps=50", "checkpoint.every_steps=50"]
    metrics = check.train("phase1_main_job", sizes)
    return {
        "test_auc": metrics["test_auc"], "teacher_auc": metrics["test_teacher_auc"],
        "auc_gap_to_teacher": metrics["test_teacher_auc"] - metrics["test_auc"],
        "samples_per_second": metrics["train_samples_per_second"],
        "seconds_to_first_step": metrics["seconds_to_first_step"], "train_steps": metrics["train_steps"],
        "peak_memory_bytes_per_rank": metrics["peak_memory_bytes_per_rank"],
    }


def resume_and_export(check: Check) -> dict:
    """Phase 2: stop at a checkpoint, resume to the end; evaluate the checkpoint on the CPU; export int8."""
    run_dir = check.out / "phase2_run"
    stopped = check.train("phase2_stop", [*check.sizes, "trainer.max_steps=10", "checkpoint.every_steps=10"], run_dir)
    resumed = check.train("phase2_resume", [*check.sizes, "trainer.max_steps=20"], run_dir)
    if (stopped["train_steps"], resumed["resumed_from_step"], resumed["train_steps"]) != (10, 10, 20):
        raise AssertionError(f"stop at 10 and resume to 20 gave steps {stopped['train_steps']}, resumed from "
                             f"{resumed['resumed_from_step']}, ended at {resumed['train_steps']}")
    check.run("phase2_cpu_eval", "launch/evaluate.py",
              [f"run_dir={run_dir}", f"hydra.run.dir={check.out / 'phase2_cpu_eval'}"], gpu_visible=False)
    cpu_eval = json.loads((check.out / "phase2_cpu_eval" / "eval_test.json").read_text())
    check.run("phase2_export", "launch/export.py", [f"run_dir={run_dir}", "precision=int8"])
    export_dir = run_dir / "export_int8"
    check.run("phase2_int8_eval", "launch/evaluate.py",
              [f"exported={export_dir}", f"hydra.run.dir={check.out / 'phase2_int8_eval'}"], gpu_visible=False)
    int8_eval = json.loads((check.out / "phase2_int8_eval" / "eval_test.json").read_text())
    return {
        "stopped_at_step": stopped["train_steps"], "resumed_from_step": resumed["resumed_from_step"],
        "final_step": resumed["train_steps"], "trained_test_auc": resumed["test_auc"],
        "cpu_eval_test_auc": cpu_eval["auc"], "cpu_eval_auc_difference": cpu_eval["auc"] - resumed["test_auc"],
        "int8_export": json.loads((export_dir / "manifest.json").read_text()), "int8_test_auc": int8_eval["auc"],
    }


def matrix(check: Check, cases: Sequence[str]) -> dict:
    """Phase 3: each case's run, ok with its figures or failed with its traceback; all cases run."""
    results = {}
    for name in cases:
        start = time.perf_counter()
        try:
            metrics = check.train(f"phase3_{name}", [*check.sizes, *CASES[name].overrides, "trainer.max_steps=30"])
            results[name] = {"status": "ok", "test_auc": metrics["test_auc"],
                             "samples_per_second": metrics["train_samples_per_second"],
                             "comms_bytes_per_step": metrics["comms_bytes_per_step"]}
        except Exception:
            results[name] = {"status": "failed", "error": traceback.format_exc()[-TAIL_CHARS:]}
        results[name]["seconds"] = time.perf_counter() - start
    failed = [name for name, result in results.items() if result["status"] != "ok"]
    if failed:
        raise PhaseFailed(f"{len(failed)} of {len(results)} cases failed: {failed}", {"cases": results})
    return {"cases": results}


def throughput(check: Check) -> dict:
    """Phase 4: the throughput benchmark's point for these GPUs (tiny on --cpu), ctr against plain PyTorch."""
    if check.cpu:
        point = ["batch_size=64", "dim=8", "rows=1000", "warmup_steps=1", "steps=4", "repetitions=1", "profile_steps=2",
                 "overrides=['model.num_residual_units=1','model.residual_hidden_dim=16','data.num_sparse=5',"
                 "'data.vocab_min=5','distributed.backend=gloo']"]
    else:
        point = ["batch_size=8192", "dim=64", "rows=1000000", "warmup_steps=5", "steps=30", "repetitions=2",
                 "profile_steps=5", "overrides=['model.residual_hidden_dim=512']"]
    run_dir = check.out / "phase4_throughput"
    check.run("phase4_throughput", "benchmarks/throughput.py",
              [f"world_size={check.nproc}", *point, f"hydra.run.dir={run_dir}"])
    result = json.loads((run_dir / "throughput.json").read_text())
    return {
        "point": result["point"], "ctr_samples_per_second": result["ctr"]["samples_per_second"],
        "plain_samples_per_second": result["plain"]["samples_per_second"], "ratio_to_plain": result["ratio_to_plain"],
        "breakdown_seconds_per_step": result["breakdown_seconds_per_step"], "limits": result["limits"],
    }


def run_phase(check: Check, index: int, name: str, phase: Callable[[], dict]) -> bool:
    """Runs one phase and writes `<out>/phase<index>_<name>.json`: ok with its figures, or failed with the traceback."""
    start = time.perf_counter()
    record: Dict[str, object] = {"phase": index, "name": name}
    try:
        record.update(status="ok", **phase())
    except PhaseFailed as failure:
        record.update(status="failed", error=str(failure), **failure.results)
    except Exception:
        record.update(status="failed", error=traceback.format_exc()[-TAIL_CHARS:])
    record["seconds"] = time.perf_counter() - start
    write_json_atomic(check.out / f"phase{index}_{name}.json", record)
    print(f"phase {index} {name}: {record['status']} in {record['seconds']:.0f} s", flush=True)
    return record["status"] == "ok"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--cpu", action="store_true", help="CPU-runnable phases at tiny sizes on gloo (CI)")
    parser.add_argument("--nproc", type=int, default=None, help="ranks (default: every local GPU; 1 with --cpu)")
    parser.add_argument("--phases", type=int, nargs="+", default=[0, 1, 2, 3, 4], choices=range(5))
    parser.add_argument("--cases", nargs="+", default=None, choices=sorted(CASES),
                        help="matrix cases (default: all on GPUs, those gloo runs with --cpu)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one run may take")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    gpus = torch.cuda.device_count()
    if not args.cpu and gpus == 0:
        sys.exit("gpu_check: no GPU is visible (torch.cuda.device_count() == 0, torch built for CUDA "
                 f"{torch.version.cuda}); run it on a GPU host after launch/setup.sh, or with --cpu for the "
                 "CPU-runnable phases at tiny sizes")
    nproc = args.nproc or (1 if args.cpu else gpus)
    if not args.cpu and nproc > gpus:
        sys.exit(f"gpu_check: --nproc {nproc} but {gpus} GPU(s) are visible")
    cases = args.cases or [name for name, case in CASES.items() if case.cpu or not args.cpu]
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.cpu, nproc, args.timeout)
    phases = {
        0: ("versions", lambda: versions(check)),
        1: ("main_job", lambda: main_job(check)),
        2: ("resume_and_export", lambda: resume_and_export(check)),
        3: ("matrix", lambda: matrix(check, cases)),
        4: ("throughput", lambda: throughput(check)),
    }
    print(f"gpu_check: {nproc} rank(s) on {'CPU (gloo)' if args.cpu else f'{gpus} GPU(s)'}, writing to {args.out}",
          flush=True)
    ok = [run_phase(check, index, *phases[index]) for index in sorted(set(args.phases))]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())

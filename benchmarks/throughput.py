"""Training throughput of ctr against a plain-PyTorch baseline and the machine's limits.

    python benchmarks/throughput.py                       # one point (configs/throughput.yaml)
    python benchmarks/throughput.py -m                    # the default grid, then the report
    python benchmarks/throughput.py -m dim=8,16,32 rows=100000   # any grid
    python benchmarks/throughput_report.py multirun/throughput/<date>/<time>   # report again

Each point trains ctr's own job (`build_trainable`: the config's model, plan, DMP, fused
optimizer, qcomms; `ctr.train.loop.train`: the TorchRec pipeline) on `world_size` ranks for
`warmup_steps`, then `repetitions` × `steps` timed steps on batches built beforehand by
ctr's reader and hashing. Between ctr's repetitions, rank 0 (the others waiting) times the
plain-PyTorch baseline (`plain_baseline.py`) on its own batches, and measures matmul FLOP/s
at the dense tower's shapes (fp32, bf16) and memory-copy bandwidth, so every ratio comes
from figures taken in the same process and run. The limits are measured once per
repetition and the highest kept. A few more steps run under torch.profiler for the step
breakdown. Rank 0 writes `throughput.json` into the job's directory.

Embedding bytes per step: read = Σ ids × row bytes (dim × table element size); written =
Σ unique rows updated × (row bytes + optimizer state bytes per row: 4 for row-wise Adagrad,
dim × 4 for Adagrad, 0 for SGD), summed over features and ranks. Per second: × steps/s.

The ranks run with the allocator settings `ctr.parallel.launcher` gives every rank it starts
(`TUNED_MALLOC`; `CTR_MALLOC=glibc` keeps glibc's defaults), ctr and baseline alike; the JSON
records them, and the CPU's model and flags. A bf16 point on a CPU without bf16
instructions is skipped with its reason in `skipped.json` (and the log): its figures would
time an emulation, 60-90x slower than fp32 where measured.
"""

import itertools
import logging
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.plain_baseline import PlainTrainer, build_plain_model, host_batch, to_device  # noqa: E402
from benchmarks.step_breakdown import breakdown  # noqa: E402
from ctr.atomic import write_json_atomic  # noqa: E402
from ctr.build import Trainable, build_trainable, seed_everything  # noqa: E402
from ctr.config import register_configs  # noqa: E402
from ctr.data.reader import batches  # noqa: E402
from ctr.models.task import DENSE_PRECISIONS  # noqa: E402
from ctr.parallel.hardware import RECORDED_CPU_FLAGS, bf16_cpu_refusal, cpu_flags, cpu_runs_bf16_natively  # noqa: E402
from ctr.parallel.launcher import launch_workers  # noqa: E402
from ctr.parallel.process_group import DistributedEnv, in_process_group  # noqa: E402
from ctr.train.console import quiet_library_noise  # noqa: E402
from ctr.train.loop import train  # noqa: E402
from ctr.train.scalars import peak_memory_per_rank  # noqa: E402

register_configs()
log = logging.getLogger(__name__)

TABLE_BYTES = {"fp32": 4, "fp16": 2}
STATE_BYTES_PER_ROW = {"sgd": lambda dim: 0, "rowwise_adagrad": lambda dim: 4, "adagrad": lambda dim: 4 * dim}


def train_overrides(point: DictConfig) -> List[str]:
    """The `launch/train.py` overrides of one grid point: the job these figures describe."""
    rows_needed = (point.warmup_steps + point.steps + point.profile_steps + 1) * point.batch_size * point.world_size
    return [
        f"model={point.model_name}", f"distributed.nproc_per_node={point.world_size}",
        f"trainer.batch_size={point.batch_size}", f"embedding.dim={point.dim}",
        f"embedding.num_embeddings={point.rows}", f"data.vocab_max={point.rows}", f"data.train_rows={rows_needed}",
        f"sharding={point.sharding_name}", f"embedding.precision={point.table_precision}", f"comms={point.comms_name}",
        f"trainer.dense_precision={point.dense_precision}", "trainer.progress_bar=false", "trainer.tensorboard=false",
        *point.overrides,
    ]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for package in ("torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu", "hydra-core"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions,
        "cpu_flags": [flag for flag in cpu_flags() if flag in RECORDED_CPU_FLAGS],
        "cpu_runs_bf16_natively": cpu_runs_bf16_natively(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "allocator": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
        or "glibc default",
    }


def _timed(fn: Callable[[], None], device: torch.device, rounds: int = 5, min_seconds: float = 0.02) -> float:
    """Seconds per call of `fn`: the best of `rounds` rounds of at least `min_seconds` each, after
    a warm-up call. The best, not the mean: a limit is what the machine can do when undisturbed."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return best


def matmul_flops_per_second(shapes: Sequence[tuple], batch: int, dtype: torch.dtype, device: torch.device) -> float:
    """FLOP/s of the dense tower's matmuls, each Linear(i→o) as its forward [B,i]·[i,o] and its
    two backward products ([B,o]·[o,i] for the input's gradient, [o,B]·[B,i] for the weight's)."""
    flops = seconds = 0.0
    for inputs, outputs in shapes:
        for m, k, n in ((batch, inputs, outputs), (batch, outputs, inputs), (outputs, batch, inputs)):
            a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
            seconds += _timed(lambda: torch.mm(a, b), device)
            flops += 2.0 * m * k * n
    return flops / seconds


def copy_bytes_per_second(device: torch.device, num_bytes: int = 256 << 20) -> float:
    """Memory-copy bandwidth: bytes read plus bytes written per second by one large tensor copy."""
    source = torch.ones(num_bytes // 4, device=device)
    target = torch.empty_like(source)
    return 2 * num_bytes / _timed(lambda: target.copy_(source), device)


def percentiles(seconds: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(seconds)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def dense_shapes(model: nn.Module) -> List[tuple]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def embedding_bytes_per_step(built: Trainable, step_batches: Sequence, cfg: DictConfig, env: DistributedEnv) -> dict:
    """Mean bytes of table rows read and written per step, over all ranks (formula: module doc)."""
    dim = cfg.embedding.dim
    row = dim * TABLE_BYTES[cfg.embedding.precision]
    state = STATE_BYTES_PER_ROW[cfg.optimizer.sparse](dim)
    ids = unique = 0
    for batch in step_batches:
        for jagged in batch.sparse_features.to_dict().values():
            ids += jagged.values().numel()
            unique += torch.unique(jagged.values()).numel()
    totals = torch.tensor([ids, unique], dtype=torch.float64, device=env.device)
    dist.all_reduce(totals)
    ids, unique = (totals / len(step_batches)).tolist()
    return {"ids": ids, "unique_rows": unique, "read": ids * row, "written": unique * (row + state),
            "plain_written": unique * 2 * dim * 4}  # baseline: fp32 rows + Adagrad's per-element state


_phase = itertools.count()


def rank0_done(env: DistributedEnv) -> None:
    """Marks the end of a rank-0-only phase; the other ranks block until then without using a
    core (a gloo barrier can poll, which would slow the single-process baseline down)."""
    key = f"throughput/phase_{next(_phase)}"
    store = dist.distributed_c10d._get_default_store()
    if env.is_main:
        store.set(key, "done")
    else:
        store.wait([key])


def _measure(env: DistributedEnv, cfg: DictConfig, point: DictConfig) -> dict:
    seed_everything(cfg.distributed.seed)
    built = build_trainable(cfg, env)
    batch_size = cfg.trainer.batch_size
    count = point.warmup_steps + point.steps + 1
    start = time.perf_counter()
    rank_batches = list(itertools.islice(
        (built.hashing(b) for b in batches(built.source, "train", batch_size, env.rank, env.world_size, True)), count))
    data_seconds = (time.perf_counter() - start) / len(rank_batches)
    if env.device.type == "cuda":  # as launch/train.py feeds its pipeline: page-locked, copied asynchronously
        rank_batches = [b.pin_memory() for b in rank_batches]

    def ctr_pass(steps: int) -> List[float]:
        """Step times of `steps` steps (the first of a pass, which builds the pipeline, dropped)."""
        result = train(built.model, built.optimizer, itertools.cycle(rank_batches), env, steps + 1,
                       log_every_steps=10**9, progress_bar=False)
        return result.step_seconds[1:]

    ctr_pass(point.warmup_steps)
    memory = peak_memory_per_rank(env.device)
    main = env.is_main
    dtype = DENSE_PRECISIONS[cfg.trainer.dense_precision]
    if main:
        keys = [key for parts in built.hashing.table_rows().values() for key in parts]
        rows = [rows for parts in built.hashing.table_rows().values() for rows in parts.values()]
        if len(keys) != len(built.hashing.table_rows()):
            raise ValueError("the plain baseline takes one table per feature: use embedding/hashing=modulo")
        plain = PlainTrainer(build_plain_model(cfg.model, len(built.source.dense_names), rows, cfg.embedding.dim)
                             .to(env.device), cfg.optimizer.sparse_lr, cfg.optimizer.sparse_eps,
                             cfg.optimizer.dense_lr, dtype)
        plain_batches = [host_batch(b, keys, env.device) for b in rank_batches]

    def plain_pass(steps: int) -> List[float]:
        """Rank 0 runs the single-process baseline on every core; the other ranks wait."""
        seconds: List[float] = []
        if main:
            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() if env.device.type == "cpu" else threads)
            for batch in itertools.islice(itertools.cycle(plain_batches), steps):
                step_start = time.perf_counter()
                plain.step(*to_device(batch, env.device)).item()
                seconds.append(time.perf_counter() - step_start)
            torch.set_num_threads(threads)
        rank0_done(env)
        return seconds

    shapes = dense_shapes(built.model)

    def limits_pass() -> dict:
        """Rank 0 measures the machine's limits with its own threads; the other ranks wait."""
        found = {}
        if main:
            found = {
                "matmul_flops_per_second": {name: matmul_flops_per_second(shapes, batch_size, d, env.device)
                                            for name, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))},
                "copy_bytes_per_second": copy_bytes_per_second(env.device),
            }
        rank0_done(env)
        return found

    plain_pass(point.warmup_steps)
    ctr_steps: List[List[float]] = []
    plain_steps: List[List[float]] = []
    measured_limits: List[dict] = []
    for _ in range(point.repetitions):
        ctr_steps.append(ctr_pass(point.steps))
        plain_steps.append(plain_pass(point.steps))
        measured_limits.append(limits_pass())
    profile = breakdown(lambda: ctr_pass(point.profile_steps), point.profile_steps, env.device) \
        if point.profile_steps else {}
    emb = embedding_bytes_per_step(built, rank_batches, cfg, env)
    if not main:
        return {}
    # A limit is the best the machine did: measured once per repetition, the highest kept.
    limits = {
        "matmul_flops_per_second": {name: max(m["matmul_flops_per_second"][name] for m in measured_limits)
                                    for name in ("fp32", "bf16")},
        "copy_bytes_per_second": max(m["copy_bytes_per_second"] for m in measured_limits),
        "threads": torch.get_num_threads(),
    }
    return summarize(point, cfg, env, ctr_steps, plain_steps, memory, data_seconds, profile, emb, shapes, limits)


def _rates(step_lists: List[List[float]], samples_per_step: int) -> List[float]:
    return [samples_per_step * len(steps) / sum(steps) for steps in step_lists]


def summarize(point, cfg, env, ctr_steps, plain_steps, memory, data_seconds, profile, emb, shapes, limits) -> dict:
    """The JSON of one grid point: every ratio is computed here from figures of this run."""
    batch_size = cfg.trainer.batch_size
    ctr_rates = _rates(ctr_steps, batch_size * env.world_size)
    plain_rates = _rates(plain_steps, batch_size)
    ctr_rate, plain_rate = statistics.median(ctr_rates), statistics.median(plain_rates)
    ctr_steps_per_second = ctr_rate / (batch_size * env.world_size)
    precision = cfg.trainer.dense_precision
    dense_flops_per_step = 3 * sum(2.0 * i * o for i, o in shapes) * batch_size  # forward + two backward products
    dense_seconds = profile.get("dense_forward", 0.0) + profile.get("dense_backward", 0.0)
    emb_seconds = profile.get("embedding_forward", 0.0) + profile.get("fused_sparse_update", 0.0)
    emb_bytes = emb["read"] + emb["written"] / env.world_size
    return {
        "point": OmegaConf.to_container(point),
        "train_overrides": train_overrides(point),
        "machine": machine(),
        "threads_per_rank": limits["threads"],
        "world_size": env.world_size,
        "ctr": {
            "samples_per_second": ctr_rate,
            "samples_per_second_per_rank": ctr_rate / env.world_size,
            "samples_per_second_per_repetition": ctr_rates,
            "step_seconds_per_repetition": ctr_steps,
            "step_seconds": percentiles([s for steps in ctr_steps for s in steps]),
            "peak_memory_bytes_per_rank": memory,
            "embedding_bytes_read_per_second": emb["read"] * ctr_steps_per_second,
            "embedding_bytes_written_per_second": emb["written"] * ctr_steps_per_second,
        },
        "plain": {
            "samples_per_second": plain_rate,
            "samples_per_second_per_repetition": plain_rates,
            "step_seconds_per_repetition": plain_steps,
            "step_seconds": percentiles([s for steps in plain_steps for s in steps]),
            "embedding_bytes_read_per_second": emb["read"] / env.world_size * plain_rate / batch_size,
            "embedding_bytes_written_per_second": emb["plain_written"] / env.world_size * plain_rate / batch_size,
        },
        "ratio_to_plain": ctr_rate / plain_rate,
        "ratio_to_plain_per_repetition": [c / p for c, p in zip(ctr_rates, plain_rates)],
        "limits": limits,
        "embedding_bytes_per_step": emb,
        "breakdown_seconds_per_step": {"data (reader + hashing, prefetched in training)": data_seconds, **profile},
        "dense": {
            "flops_per_step": dense_flops_per_step,
            "seconds_per_step": dense_seconds,
            "flops_per_second": dense_flops_per_step / dense_seconds if dense_seconds else None,
            "fraction_of_matmul_peak": (dense_flops_per_step / dense_seconds / limits["matmul_flops_per_second"][precision]
                                        if dense_seconds else None),
        },
        "embedding": {
            # rank 0's share: reads of its own lookups (after input distribution), writes of its tables
            "bytes_per_second_in_embedding_time": emb_bytes / env.world_size / emb_seconds if emb_seconds else None,
            "fraction_of_copy_bandwidth": (emb_bytes / env.world_size / emb_seconds / limits["copy_bytes_per_second"]
                                           if emb_seconds else None),
        },
    }


def measure_worker(cfg_container: dict, point_container: dict) -> dict:
    """One rank of a grid point (started by `launch_workers`)."""
    quiet_library_noise()
    cfg, point = OmegaConf.create(cfg_container), OmegaConf.create(point_container)
    return in_process_group(_measure, cfg.distributed.backend, cfg, point)


def skip_reason(point: DictConfig) -> Optional[str]:
    """Why this machine cannot run `point` as intended (None: it can): a bf16 tower on a CPU
    without bf16 instructions would time an emulation, and ctr refuses that job anyway."""
    if point.dense_precision == "bf16" and not torch.cuda.is_available() and not cpu_runs_bf16_natively():
        return f"dense_precision=bf16 skipped: {bf16_cpu_refusal()}"
    return None


@hydra.main(version_base="1.3", config_path="../configs", config_name="throughput")
def main(point: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    reason = skip_reason(point)
    if reason is not None:
        # Written beside the other points, but not as throughput.json: the report has no figures to show.
        write_json_atomic(out_dir / "skipped.json", {"point": OmegaConf.to_container(point), "reason": reason,
                                                     "machine": machine()})
        log.warning("%s: %s", " ".join(train_overrides(point)[:2]), reason)
        return float("nan")
    cfg = hydra.compose(config_name="config", overrides=train_overrides(point))
    result = launch_workers(measure_worker, point.world_size, OmegaConf.to_container(cfg, resolve=True),
                            OmegaConf.to_container(point))[0]
    out = out_dir / "throughput.json"
    write_json_atomic(out, result)
    log.info("%s: ctr %.0f samples/s, plain %.0f samples/s, ratio %.2f (per repetition %s); written to %s",
             " ".join(train_overrides(point)[:2]), result["ctr"]["samples_per_second"],
             result["plain"]["samples_per_second"], result["ratio_to_plain"],
             ", ".join(f"{r:.2f}" for r in result["ratio_to_plain_per_repetition"]), out)
    return result["ratio_to_plain"]


if __name__ == "__main__":
    main()

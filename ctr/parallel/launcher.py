"""Starts N local ranks of a job function through torch's elastic launcher (what torchrun uses).

This lets `python launch/train.py` (and so every Hydra multirun job) be a full
distributed job without an outer `torchrun`.
"""

import os
import uuid
from typing import Any, Callable, Dict

from torch.distributed.launcher.api import LaunchConfig, elastic_launch

# glibc's malloc maps and unmaps large temporary buffers every step with its adaptive
# default thresholds, which moved CPU throughput 2-3x in one early measurement and made
# no measurable difference in benchmarks/throughput.py (benchmarks/RESULTS.md); fixed settings
# give every run one known allocator. glibc reads them at start-up only, so the launcher
# sets them for the ranks it spawns; values already in the environment win, and
# CTR_MALLOC=glibc keeps glibc's own.
TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # the largest glibc accepts; fixed, not adaptive
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),  # keep freed memory instead of returning it
    "MALLOC_TOP_PAD_": str(64 << 20),  # grow the heap in big steps
}


def allocator_env() -> Dict[str, str]:
    """The `MALLOC_*` settings the launcher adds to the ranks' environment."""
    if os.environ.get("CTR_MALLOC") == "glibc" or any(key in os.environ for key in TUNED_MALLOC):
        return {}
    return dict(TUNED_MALLOC)


def launch_workers(job: Callable[..., Any], nproc_per_node: int, *args: Any) -> Dict[int, Any]:
    """Runs job(*args) on `nproc_per_node` local ranks; returns each rank's return value.

    Raises torch's ChildFailedError, naming the failed rank, if any rank fails.
    Like torchrun, it gives each rank an equal share of the CPU threads; it also sets the
    tuned allocator (`allocator_env`) for them.
    """
    if nproc_per_node < 1:
        raise ValueError(f"distributed.nproc_per_node={nproc_per_node}: expected at least 1")
    threads = max(1, (os.cpu_count() or 1) // nproc_per_node)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc_per_node,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        local_addr="127.0.0.1",
    )
    added = {"OMP_NUM_THREADS": str(threads)} if "OMP_NUM_THREADS" not in os.environ else {}
    added.update(allocator_env())
    os.environ.update(added)
    try:
        return elastic_launch(config, job)(*args)
    finally:
        for key in added:
            os.environ.pop(key, None)

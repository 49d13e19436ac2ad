"""Starts N local ranks of a job function through torch's elastic launcher (what torchrun uses).

This lets `python launch/train.py` (and so every Hydra multirun job) be a full
distributed job without an outer `torchrun`.
"""

import os
import uuid
from typing import Any, Callable, Dict

from torch.distributed.launcher.api import LaunchConfig, elastic_launch


def launch_workers(job: Callable[..., Any], nproc_per_node: int, *args: Any) -> Dict[int, Any]:
    """Runs job(*args) on `nproc_per_node` local ranks; returns each rank's return value.

    Raises torch's ChildFailedError, naming the failed rank, if any rank fails.
    Like torchrun, it gives each rank an equal share of the CPU threads.
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
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(threads))
    try:
        return elastic_launch(config, job)(*args)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)

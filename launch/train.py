"""Trains a CTR model.

    torchrun --standalone --nproc_per_node=2 launch/train.py [overrides]   # torchrun starts the ranks
    python launch/train.py [overrides]                                     # starts distributed.nproc_per_node ranks itself
    python launch/train.py -m embedding.dim=8,16 model.num_residual_units=2,3   # a sweep of full distributed jobs

Returns the validation AUC, the objective that Hydra's Optuna sweeper maximises.
"""

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ctr.config import group_overrides, register_configs
from ctr.parallel.launcher import launch_workers
from ctr.sweep.summary import write_job_record
from ctr.train.run import JOB_START_ENV, run, run_worker

register_configs()
log = logging.getLogger("ctr.launch")


def train_job(cfg: DictConfig, run_dir: Path) -> dict:
    """The job every launcher runs: in this process's rank under torchrun, else N ranks started here."""
    if "RANK" in os.environ:
        return run(cfg, run_dir)
    os.environ[JOB_START_ENV] = str(time.time())
    results = launch_workers(
        run_worker, cfg.distributed.nproc_per_node, OmegaConf.to_container(cfg, resolve=True), str(run_dir)
    )
    return results[0]


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    start = time.time()
    try:
        metrics = train_job(cfg, run_dir)
    except Exception as error:
        if os.environ.get("RANK", "0") == "0":
            write_job_record(run_dir, "failed", time.time() - start, f"{type(error).__name__}: {error}")
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        # In a sweep, one failed job is recorded and the sweep goes on to the next.
        log.error("job %s failed (%s); the sweep continues", run_dir, error)
        return float("nan")
    if os.environ.get("RANK", "0") == "0":
        write_job_record(run_dir, "completed", time.time() - start)
    # A sweep's objective: the validation AUC of the weights the run keeps (never a test metric;
    # nan without a validation split).
    value = metrics.get("best_val_auc")
    return float(value if value is not None else metrics.get("val_auc", float("nan")))


if __name__ == "__main__":
    # `embedding.hashing=qr` picks the option as `embedding/hashing=qr` does.
    sys.argv[1:] = group_overrides(sys.argv[1:])
    main()

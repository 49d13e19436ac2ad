"""Trains a CTR model.

    torchrun --standalone --nproc_per_node=2 launch/train.py [overrides]   # torchrun starts the ranks
    python launch/train.py [overrides]                                     # starts distributed.nproc_per_node ranks itself
    python launch/train.py -m embedding.dim=8,16                           # a sweep: each job a full distributed job
"""

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ctr.config import register_configs
from ctr.parallel.launcher import launch_workers
from ctr.train.run import run, run_worker

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if "RANK" in os.environ:  # a rank started by torchrun
        return run(cfg, run_dir)
    results = launch_workers(
        run_worker, cfg.distributed.nproc_per_node, OmegaConf.to_container(cfg, resolve=True), str(run_dir)
    )
    return results[0]


if __name__ == "__main__":
    main()

"""Trains a CTR model: `torchrun --standalone --nproc_per_node=2 launch/train.py [overrides]`.

Run plainly (`python launch/train.py`), it starts `distributed.nproc_per_node` workers
itself through torch's elastic launcher, so each Hydra multirun job is a full
distributed job.
"""

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ctr.config import register_configs
from ctr.train.run import run

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()

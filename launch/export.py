"""Exports a trained run's model with int8 or int4 row-wise tables (TorchRec's quantized modules).

    python launch/export.py run_dir=<training run dir> precision=int8 [checkpoint_path=<dir>] [output=<dir>]
"""

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ctr.config import register_configs
from ctr.train.console import quiet_library_noise
from ctr.train.export import export, load_trained

register_configs()
log = logging.getLogger("ctr.launch")


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    quiet_library_noise()
    run_dir = Path(cfg.run_dir)
    output = Path(cfg.output) if cfg.output else run_dir / f"export_{cfg.precision}"
    summary = export(load_trained(run_dir, cfg.checkpoint_path), cfg.precision, output)
    log.info("exported to %s: %s", output, json.dumps(summary))


if __name__ == "__main__":
    main()

"""Exports a trained run as an inference artifact: weights, feature pipeline, manifest.

    python launch/export.py run_dir=<training run dir> precision=fp32|fp16|int8|int4 [dense_precision=bf16] \
        [checkpoint_path=<dir>] [output=<dir>]
"""

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
def main(cfg: DictConfig) -> dict:
    quiet_library_noise()
    run_dir = Path(cfg.run_dir)
    output = Path(cfg.output) if cfg.output else run_dir / f"export_{cfg.precision}"
    manifest = export(load_trained(run_dir, cfg.checkpoint_path), cfg.precision, output, cfg.dense_precision,
                      cfg.split, cfg.batch_size)
    metrics = manifest["metrics"]
    log.info("exported to %s: %s tables, %s dense tower, %d bytes; %s AUC %.6f", output, cfg.precision,
             cfg.dense_precision, manifest["artifact_bytes"], metrics["split"], metrics["auc"])
    return manifest


if __name__ == "__main__":
    main()

"""Scores raw rows of the training layout with an exported artifact: one prediction per row.

    python launch/predict.py artifact=<export dir> input=<file or directory> output=<file.csv> \
        [key_columns=[userId,movieId]] [on_bad_row=skip] [workers=2] [batch_size=4096]
"""

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ctr.config import register_configs
from ctr.inference.scoring import score_files

register_configs()
log = logging.getLogger("ctr.launch")


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> dict:
    summary = score_files(Path(cfg.artifact), Path(cfg.input), Path(cfg.output), list(cfg.key_columns), cfg.on_bad_row,
                          cfg.batch_size, cfg.workers, cfg.overwrite)
    log.info("%d rows → %s (%d scored, bad rows: %s)", summary["rows"], cfg.output, summary["scored"],
             json.dumps(summary["bad_rows"]))
    return summary


if __name__ == "__main__":
    main()

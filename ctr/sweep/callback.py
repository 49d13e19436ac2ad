"""Hydra callback that writes the sweep summary when a multirun ends."""

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ctr.sweep.summary import write_summary

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        failed = [row["job"] for row in rows if row["status"] != "completed"]
        log.info("sweep summary of %d jobs in %s/summary.{csv,md,png}", len(rows), sweep_dir)
        if failed:
            log.error("%d of %d jobs failed: %s (see each job's job.json)", len(failed), len(rows), failed)

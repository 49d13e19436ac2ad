"""Evaluates a trained run's checkpoint, or an exported model, on a data split (one process).

    python launch/evaluate.py run_dir=<training run dir> [checkpoint_path=<dir>] [split=test]
    python launch/evaluate.py exported=<export dir> [split=val]
"""

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ctr.config import register_configs
from ctr.parallel.process_group import DistributedEnv
from ctr.train.console import quiet_library_noise
from ctr.train.evaluate import evaluate
from ctr.train.export import load_exported, load_trained, table_bytes

register_configs()
log = logging.getLogger("ctr.launch")


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    quiet_library_noise()
    if (cfg.run_dir is None) == (cfg.exported is None):
        raise ValueError("give exactly one of run_dir=<training run dir> or exported=<export dir>")
    trained = load_exported(Path(cfg.exported)) if cfg.exported else load_trained(Path(cfg.run_dir), cfg.checkpoint_path)
    env = DistributedEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"), backend="none")
    metrics = evaluate(trained.task, trained.source, cfg.split, trained.hashing, env, cfg.batch_size)
    metrics["table_bytes"] = table_bytes(trained.task)
    out = Path(HydraConfig.get().runtime.output_dir) / f"eval_{cfg.split}.json"
    out.write_text(json.dumps(metrics, indent=2))
    log.info("%s AUC %.4f  log-loss %.4f  (%d table bytes) → %s", cfg.split, metrics["auc"], metrics["log_loss"],
             metrics["table_bytes"], out)
    return metrics


if __name__ == "__main__":
    main()

"""Exports the vectors of a trained run's tables, gathered from their shards, with their keys.

    python launch/export_embeddings.py run_dir=<training run dir> tables=[item_id] [output=<dir>] \
        [checkpoint_path=<dir>] [nproc_per_node=2]
    torchrun --standalone --nproc_per_node=2 launch/export_embeddings.py run_dir=... tables=[...]

Writes `<output>/<table>/{vectors.npy,keys.npy,meta.json}` (`ctr.features.vector_files`).
"""

import os

import hydra
from omegaconf import DictConfig, OmegaConf

from ctr.config import register_configs
from ctr.parallel.launcher import launch_workers
from ctr.train.embedding_export import export_worker, run_export

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="export_embeddings")
def main(cfg: DictConfig) -> dict:
    if "RANK" in os.environ:
        return run_export(cfg)
    return launch_workers(export_worker, cfg.nproc_per_node, OmegaConf.to_container(cfg, resolve=True))[0]


if __name__ == "__main__":
    main()

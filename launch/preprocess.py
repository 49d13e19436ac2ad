"""Preprocesses Criteo TSV into shards: `python launch/preprocess.py input=<path> output=<dir> [on_bad_row=skip]`.

Also callable from Python as `ctr.data.preprocess.preprocess(input, output, ...)`.
"""

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from ctr.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    instantiate(cfg, _convert_="all")


if __name__ == "__main__":
    main()

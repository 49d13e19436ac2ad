"""Preprocesses raw data into shards.

Criteo TSV: `python launch/preprocess.py input=<path> output=<dir> [on_bad_row=skip] [workers=N]`,
or over every rank of every node: `torchrun --nnodes=M --nproc_per_node=N ... launch/preprocess.py
input=<path> output=<dir on a shared file system>`.
A CSV data set described by a schema: `python launch/preprocess.py data=<name> [workers=N]`
(e.g. `data=movielens100k`), or `torchrun ... launch/preprocess.py data=<name>`, which writes to
that data config's `path`.

Also callable from Python as `ctr.data.preprocess.preprocess(input, output, ...)` and
`ctr.data.tabular.preprocess_csv(schema, output, ...)`.
"""

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from ctr.config import register_configs
from ctr.data.tabular import preprocess_csv

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    if cfg.data is None:
        instantiate({k: v for k, v in cfg.items() if k != "data"}, _convert_="all")
        return
    preprocess_csv(cfg.data.schema, cfg.data.path, on_bad_row=cfg.on_bad_row, shard_rows=cfg.shard_rows,
                   chunk_rows=cfg.chunk_rows, overwrite=cfg.overwrite, progress_bar=cfg.progress_bar,
                   workers=cfg.workers, part_bytes=cfg.part_bytes)


if __name__ == "__main__":
    main()

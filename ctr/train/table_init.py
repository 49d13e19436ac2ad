"""Tables that start from pre-trained rows: `embedding.init.<table>={checkpoint: ...}` or `{vectors: ...}`,
a table named by its feature or shared table (`movie` for `t_movie`), as the vector export names it.

- `checkpoint`: a table of another ctr run, by name (`table`, default the same) and of the
  same shape, read with torch.distributed.checkpoint straight into this run's shards, so
  it reshards from the source run's plan and world size to this one's. The checkpoint is
  verified against its recorded digests and read through `ctr.train.safe_dcp` (nothing in
  it can run code). A run directory stands for its best checkpoint, else its latest.
- `vectors`: a vectors directory or a word2vec text file keyed by raw ids
  (`ctr.features.vector_files`), placed through the table's own hashing; rows the file does not
  cover keep their random initialisation.

Applied once the model is sharded and before training (a resumed run then loads its own
checkpoint over it). A wrong table name, shape or file stops the run at start-up, naming
the file and the table. The run records how many rows each table took (`initialised_rows`).
"""

import logging
from pathlib import Path
from typing import Dict, Iterable, Mapping, Union

import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.distributed._shard.sharded_tensor import ShardedTensor

from ctr.build import Trainable
from ctr.config import TableInitConfig
from ctr.features.tables import named_tables, table_name, tables_by_name
from ctr.features.vector_files import place, read_vectors
from ctr.parallel.process_group import DistributedEnv
from ctr.parallel.state import write_rows
from ctr.train.checkpoint import BEST, CheckpointError, is_complete, latest, verify_share
from ctr.train.safe_dcp import SafeFileSystemReader, load_state

log = logging.getLogger(__name__)

Table = Union[torch.Tensor, ShardedTensor]


def init_settings(init: Mapping, tables: Iterable[str]) -> Dict[str, TableInitConfig]:
    """`embedding.init`, checked: known tables (named as `ctr.features.tables.tables_by_name`
    says), known keys, one source per table. Keyed by the names as given."""
    tables_by_name(tables, list(init), "embedding.init")
    parsed = {}
    for name, entry in init.items():
        key = f"embedding.init.{name}"
        try:
            setting = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TableInitConfig), entry))
        except OmegaConfBaseException as error:
            raise ValueError(f"{key}={entry!r}: expected {{checkpoint: <run or checkpoint dir>, table: <name>}} "
                             f"or {{vectors: <file>}} ({error.msg})") from error
        if (setting.checkpoint is None) == (setting.vectors is None):
            raise ValueError(f"{key}: set exactly one of checkpoint and vectors")
        if setting.table is not None and setting.checkpoint is None:
            raise ValueError(f"{key}.table names a checkpoint's table; it goes with {key}.checkpoint")
        parsed[name] = setting
    return parsed


def initialise_tables(cfg, built: Trainable, env: DistributedEnv) -> Dict[str, int]:
    """Loads every table `embedding.init` names into the sharded model; returns the rows each took."""
    tables = {table.name: table for table in built.tables}
    settings = init_settings(cfg.embedding.get("init") or {}, tables)
    state = built.model.state_dict()
    initialised = {}
    for name, setting in settings.items():
        config = tables[table_name(name)]
        target = state[_weight_key(state, config.name)]
        if setting.checkpoint is not None:
            initialised[name] = _from_checkpoint(Path(setting.checkpoint), setting.table or name, name, target, env)
        else:
            vectors = read_vectors(Path(setting.vectors), name)
            rows, values = place(vectors, name, config.feature_names[0], config.num_embeddings, config.embedding_dim,
                                 built.hashing)
            write_rows(target, rows, values)
            initialised[name] = len(rows)
        if env.is_main:
            log.info("table %s: %d of %d rows from %s", name, initialised[name], config.num_embeddings,
                     setting.checkpoint or setting.vectors)
    return initialised


def _weight_key(keys, table: str) -> str:
    found = [key for key in keys if key.endswith(f".embedding_bags.{table}.weight")]
    if len(found) != 1:
        raise KeyError(f"table {table}: expected one weight in the model's state, found {found}")
    return found[0]


def checkpoint_of(path: Path, table: str) -> Path:
    """`path` if it is a complete checkpoint, else the best (or latest) one of the run directory `path`."""
    if is_complete(path):
        return path
    directory = path / "checkpoints"
    found = directory / BEST if is_complete(directory / BEST) else latest(directory) if directory.is_dir() else None
    if found is None:
        raise CheckpointError(f"embedding.init.{table}.checkpoint={str(path)!r}: neither a complete checkpoint nor a run "
                              f"directory with one under {directory}")
    return found


def _from_checkpoint(path: Path, source_table: str, table: str, target: Table, env: DistributedEnv) -> int:
    checkpoint = checkpoint_of(path, table)
    problem = verify_share(checkpoint, env.rank, env.world_size)
    refused = torch.tensor([int(problem is not None)], device=env.device)
    dist.all_reduce(refused, op=dist.ReduceOp.MAX)
    if refused.item():
        raise CheckpointError(f"embedding.init.{table}.checkpoint: {problem or f'{checkpoint}: refused by another rank'}")
    entries = SafeFileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    weights = {key.split(".")[-2]: key for key in entries if key.startswith("model.") and key.endswith(".weight")
               and ".embedding_bags." in key}
    named = named_tables(weights)
    if source_table not in named:
        raise KeyError(f"embedding.init.{table}: checkpoint {checkpoint} has no table {source_table!r}; "
                       f"its tables: {sorted(named)}")
    found = weights[named[source_table]]
    shape, wanted = tuple(entries[found].size), tuple(target.size())
    if shape != wanted:
        raise ValueError(f"embedding.init.{table}: table {source_table!r} of checkpoint {checkpoint} is "
                         f"{shape[0]} × {shape[1]}, table {table} is {wanted[0]} × {wanted[1]} (rows × dim)")
    load_state({found: target}, checkpoint)
    return wanted[0]

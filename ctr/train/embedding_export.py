"""A trained run's tables as vectors and keys, gathered from their shards (`launch/export_embeddings.py`).

The run's model is rebuilt as training built it, from its stored config (read by
`load_stored_config`: only ctr's own classes) over this job's ranks, sharded by the
planner (which may place the tables unlike the training run did); its checkpoint is
verified against its recorded sha256s and loaded with DCP, which reshards it; each named
table is then gathered whole onto rank 0 from whatever holds it (table-, column- or
row-wise shards, or a replica) and written with its keys (`ctr.features.vector_files`):
the raw ids where the hashing keeps them (`vocab`, whose out-of-vocabulary row is left
out), else the row numbers.
"""

import logging
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ctr.build import build_trainable
from ctr.features.hashing import FeatureHashing
from ctr.features.tables import tables_by_name
from ctr.features.vector_files import write_vectors
from ctr.parallel.process_group import DistributedEnv, in_process_group
from ctr.parallel.state import full_state_dict
from ctr.train.checkpoint import Checkpointer, checkpoint_directory
from ctr.train.console import configure_worker_logging, quiet_library_noise
from ctr.train.export import checkpoint_path, load_stored_config

log = logging.getLogger(__name__)

VECTORS_DIR = "vectors"  # <run_dir>/vectors/<table>/ when `output` is not given


def table_weights(state_keys: List[str], tables: List[str]) -> Dict[str, str]:
    """The state-dict entry of each named table (`ctr.features.tables.tables_by_name`: a feature
    or shared table of the data, or a part such as `item@q` under qr hashing).

    >>> table_weights(["model.embeddings.collection.embedding_bags.t_movie.weight"], ["movie"])
    {'movie': 'model.embeddings.collection.embedding_bags.t_movie.weight'}
    """
    weights = {key.split(".embedding_bags.", 1)[1].removesuffix(".weight"): key
               for key in state_keys if ".embedding_bags." in key and key.endswith(".weight")}
    return {name: weights[table] for name, table in tables_by_name(weights, tables, "tables").items()}


def hashing_name(cfg: DictConfig) -> str:
    """`embedding.hashing`'s option (modulo, qr, vocab) from its class."""
    return str(cfg.embedding.hashing._target_).rsplit(".", 1)[-1].removesuffix("Hashing").lower()


def table_row_ids(hashing: FeatureHashing, name: str, shared_tables: Dict[str, List[str]]) -> Optional[np.ndarray]:
    """The raw id of each row of table `name` where the hashing keeps them (-1: a row of no
    single id), else None. A shared table's features must agree."""
    features = shared_tables.get(name, [name])
    ids = [hashing.row_ids(feature) for feature in features if feature in hashing.table_rows()]
    ids = [i for i in ids if i is not None]
    if not ids:
        return None
    if any(not np.array_equal(ids[0].numpy(), other.numpy()) for other in ids[1:]):
        raise ValueError(f"table {name!r}: its features {features} hash raw ids to different rows")
    return ids[0].numpy()


def export_tables(cfg: DictConfig, env: DistributedEnv) -> Optional[dict]:
    """Writes each table of `cfg.tables` (the export's config) into `<output>/<table>/`; a
    collective. Returns, on rank 0, the rows, seconds and vectors/s of each table and in all."""
    run_dir = Path(cfg.run_dir)
    trained_cfg = load_stored_config(run_dir / ".hydra" / "config.yaml")
    started = time.perf_counter()
    built = build_trainable(trained_cfg, env)
    path = checkpoint_path(run_dir, trained_cfg, cfg.checkpoint_path)
    checkpointer = Checkpointer(checkpoint_directory(trained_cfg.checkpoint.dir, run_dir), 1, env.device, {})
    checkpointer.load(path, built.model, None, None, weights_only=True)
    loaded = time.perf_counter()
    output = Path(cfg.output) if cfg.output else run_dir / VECTORS_DIR
    entries = table_weights(list(built.model.state_dict()), list(cfg.tables))
    shared = dict(getattr(built.source, "shared_tables", {}))
    summary: dict = {"checkpoint": str(path), "world_size": env.world_size, "tables": {},
                     "build_and_load_seconds": loaded - started}
    for name, key in entries.items():
        table_started = time.perf_counter()
        gathered = full_state_dict(built.model, env.device, keys={key})
        if not env.is_main:
            continue
        vectors = gathered[key].float().numpy()
        row_ids = table_row_ids(built.hashing, name, shared)
        if row_ids is None:
            keys, keys_are = np.arange(len(vectors), dtype=np.int64), "row"
        else:
            kept = row_ids >= 0
            vectors, keys, keys_are = vectors[kept], row_ids[kept], "raw"
        write_vectors(output / name, vectors, keys, name, keys_are, hashing_name(trained_cfg), str(run_dir.resolve()))
        seconds = time.perf_counter() - table_started
        summary["tables"][name] = {"rows": len(vectors), "dim": int(vectors.shape[1]), "keys": keys_are,
                                   "seconds": seconds, "vectors_per_second": len(vectors) / seconds}
        log.info("%s: %d vectors of dim %d (keys: %s) gathered from %d rank(s) and written to %s in %.3f s "
                 "(%.0f vectors/s)", name, len(vectors), vectors.shape[1], keys_are, env.world_size, output / name,
                 seconds, len(vectors) / seconds)
    if not env.is_main:
        return None
    summary["seconds"] = time.perf_counter() - loaded
    summary["rows"] = sum(t["rows"] for t in summary["tables"].values())
    summary["vectors_per_second"] = summary["rows"] / summary["seconds"]
    return summary


def run_export(cfg: DictConfig) -> Optional[dict]:
    """The job on this rank: joins the process group, exports, tears the group down."""
    quiet_library_noise()
    return in_process_group(lambda env: export_tables(cfg, env), cfg.backend)


def export_worker(cfg_container: dict) -> Optional[dict]:
    """Entry of a rank started by `ctr.parallel.launcher`; logs into the run's `export_embeddings_rank<r>.log`."""
    configure_worker_logging(Path(cfg_container["run_dir"]), int(os.environ["RANK"]), "export_embeddings")
    return run_export(OmegaConf.create(cfg_container))

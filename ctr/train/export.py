"""A trained run's model, offline: read from a checkpoint, exported with quantized tables.

Export converts the tables to TorchRec's quantized EmbeddingBagCollection (row-wise int8
or int4, each row with its own fp16 scale and bias: FBGEMM's inference TBE) and writes
an export directory: the quantized state dict, the training config and a summary that is
also the export's manifest. Loading rebuilds the model from the config, so no pickled code
is kept on disk; a stored config is merged onto ctr's schema and may name only ctr's own
classes (`load_stored_config`), and export replaces only a previous export's own files.
"""

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchrec.inference.modules import quantize_embeddings
from torchrec.tensor_types import UInt4Tensor

from ctr.build import build_input_hashing, build_task
from ctr.config import Config, StorageReservationConfig
from ctr.features.hashing import FeatureHashing
from ctr.models.task import ClickTask
from ctr.train.checkpoint import BEST, checkpoint_directory, latest, verify
from ctr.train.safe_dcp import load_state

# `precision` of an export → the quantized weight dtype TorchRec maps to FBGEMM's int8/int4 rows.
EXPORT_DTYPES = {"int8": torch.qint8, "int4": torch.quint4x2}
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "export.json"  # also the manifest: the files an export wrote
EXPORT_FILES = [MODEL_FILE, CONFIG_FILE, SUMMARY_FILE]

# `_target_`s a stored config may name: ctr's own classes, the storage reservation the
# schema names, and TorchRec's proposers that `sharding.proposers` documents.
ALLOWED_TARGET_PREFIX = "ctr."
ALLOWED_TARGETS = frozenset({
    StorageReservationConfig._target_,
    "torchrec.distributed.planner.proposers.GreedyProposer",
    "torchrec.distributed.planner.proposers.UniformProposer",
    "torchrec.distributed.planner.proposers.GridSearchProposer",
})


@dataclass
class Trained:
    """A model ready to score a source's rows: its config, data source, hashing and task, and
    `origin`, the run or export directory it was read from."""

    cfg: DictConfig
    source: object
    hashing: FeatureHashing
    task: ClickTask
    origin: Path


def _targets(node: Any, key: str = "") -> Iterator[Tuple[str, Any]]:
    """(dotted key, value) of every `_target_` in a config container."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, value in items:
        path = f"{key}.{name}" if key else str(name)
        if name == "_target_":
            yield path, value
        else:
            yield from _targets(value, path)


def load_stored_config(path: Path) -> DictConfig:
    """A stored training config, merged onto ctr's schema, refused if any `_target_` is not
    ctr's own (`ALLOWED_TARGET_PREFIX`, `ALLOWED_TARGETS`): instantiating it runs no one else's code."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
        container = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as error:
        raise ValueError(f"{path}: not a ctr training config: {error}") from error
    for key, target in _targets(container):
        if not (isinstance(target, str) and (target.startswith(ALLOWED_TARGET_PREFIX) or target in ALLOWED_TARGETS)):
            raise ValueError(f"{path}: {key}={target!r}: ctr builds only its own classes "
                             f"({ALLOWED_TARGET_PREFIX}*, {sorted(ALLOWED_TARGETS)}); refusing this config")
    return OmegaConf.create(container)


def _build(cfg: DictConfig, origin: Path) -> Trained:
    source = instantiate(cfg.data)
    hashing = build_input_hashing(cfg, source)
    return Trained(cfg, source, hashing, build_task(cfg, source, torch.device("cpu"), hashing), origin)


def checkpoint_path(run_dir: Path, cfg: DictConfig, checkpoint: Optional[str]) -> Path:
    """`checkpoint` (`checkpoint_path=`) if given, else the run's best checkpoint, else its latest."""
    if checkpoint:
        return Path(checkpoint)
    directory = checkpoint_directory(cfg.checkpoint.dir, run_dir)
    found = directory / BEST if (directory / BEST).is_dir() else latest(directory)
    if found is None:
        raise FileNotFoundError(f"run_dir={run_dir}: no checkpoint under {directory}")
    return found


def load_trained(run_dir: Path, checkpoint: Optional[str] = None) -> Trained:
    """The run's model (config from `<run_dir>/.hydra/config.yaml`) with a checkpoint's weights,
    every table whole in this one process (DCP reshards the saved shards on load), after the
    checkpoint's files are verified against their recorded sha256."""
    trained = _build(load_stored_config(run_dir / ".hydra" / CONFIG_FILE), run_dir)
    path = checkpoint_path(run_dir, trained.cfg, checkpoint)
    verify(path)
    state = {"model": trained.task.state_dict()}
    load_state(state, path)
    trained.task.load_state_dict(state["model"])
    return trained


def _nbytes(tensor: torch.Tensor) -> int:
    # TorchRec's int4 view counts two elements per stored byte.
    return tensor.numel() * tensor.element_size() // (2 if isinstance(tensor, UInt4Tensor) else 1)


def table_bytes(task: torch.nn.Module) -> int:
    """Bytes the embedding tables take as stored; a quantized row includes its fp16 scale
    and bias and FBGEMM's padding of each row to a multiple of 16 bytes."""
    return sum(_nbytes(t) for name, t in task.state_dict().items() if ".embedding_bags." in name)


def quantize(task: ClickTask, precision: str) -> ClickTask:
    if precision not in EXPORT_DTYPES:
        raise ValueError(f"precision={precision!r}: expected one of {list(EXPORT_DTYPES)}")
    return quantize_embeddings(task, dtype=EXPORT_DTYPES[precision], inplace=True)


def _previous_export(output: Path) -> bool:
    try:
        return json.loads((output / SUMMARY_FILE).read_text()).get("files") == EXPORT_FILES
    except (OSError, ValueError, AttributeError):
        return False


def _check_output(output: Path, origin: Path) -> None:
    """Refuses an `output` export may not replace: the run it reads, a parent of it, or a
    non-empty directory that is not a previous export (or holds files it did not write)."""
    resolved, origin = output.resolve(), origin.resolve()
    if resolved == origin or resolved in origin.parents:
        raise ValueError(f"output={output}: is {origin} or a parent of it; give the export its own directory")
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not output.is_dir() or not _previous_export(output):
        raise ValueError(f"output={output}: exists and is not a previous export (no {SUMMARY_FILE} manifest); "
                         "refusing to replace it")
    foreign = sorted(p.name for p in output.iterdir() if p.name not in EXPORT_FILES)
    if foreign:
        raise ValueError(f"output={output}: a previous export that now also holds {foreign}; refusing to replace it")


def export(trained: Trained, precision: str, output: Path) -> dict:
    """Writes `trained` with `precision` tables to `output`; returns the summary it writes.

    `output` may be absent, empty, or a previous export, whose files alone are replaced."""
    _check_output(output, trained.origin)
    before = table_bytes(trained.task)
    task = quantize(trained.task, precision)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=output.name + ".partial-", dir=output.parent))
    try:
        torch.save(task.state_dict(), tmp / MODEL_FILE)
        OmegaConf.save(trained.cfg, tmp / CONFIG_FILE)
        summary = {"precision": precision, "table_bytes": table_bytes(task), "table_bytes_before": before,
                   "files": EXPORT_FILES}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        if output.exists():
            for name in EXPORT_FILES:
                (output / name).unlink(missing_ok=True)
            output.rmdir()
        tmp.replace(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def load_exported(directory: Path) -> Trained:
    """An export directory's model: rebuilt from its config, quantized, then its weights loaded."""
    trained = _build(load_stored_config(directory / CONFIG_FILE), directory)
    precision = json.loads((directory / SUMMARY_FILE).read_text())["precision"]
    trained.task = quantize(trained.task, precision)
    with torch.serialization.safe_globals([UInt4Tensor]):
        trained.task.load_state_dict(torch.load(directory / MODEL_FILE, weights_only=True))
    return trained

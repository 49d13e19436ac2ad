"""A trained run's model, offline: read from a checkpoint, exported with quantized tables.

Export converts the tables to TorchRec's quantized EmbeddingBagCollection (row-wise int8
or int4, each row with its own fp16 scale and bias: FBGEMM's inference TBE) and writes
an export directory: the quantized state dict, the training config and a summary.
Loading rebuilds the model from the config, so no pickled code is kept on disk.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchrec.inference.modules import quantize_embeddings
from torchrec.tensor_types import UInt4Tensor

from ctr.build import build_input_hashing, build_task
from ctr.features.hashing import FeatureHashing
from ctr.models.task import ClickTask
from ctr.train.checkpoint import BEST, checkpoint_directory, latest

# `precision` of an export → the quantized weight dtype TorchRec maps to FBGEMM's int8/int4 rows.
EXPORT_DTYPES = {"int8": torch.qint8, "int4": torch.quint4x2}
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "export.json"


@dataclass
class Trained:
    """A model ready to score a source's rows: its config, data source, hashing and task."""

    cfg: DictConfig
    source: object
    hashing: FeatureHashing
    task: ClickTask


def _build(cfg: DictConfig) -> Trained:
    source = instantiate(cfg.data)
    hashing = build_input_hashing(cfg, source)
    return Trained(cfg, source, hashing, build_task(cfg, source, torch.device("cpu"), hashing))


def checkpoint_path(run_dir: Path, cfg: DictConfig, checkpoint: Optional[str]) -> Path:
    """`checkpoint` if given, else the run's best checkpoint, else its latest."""
    if checkpoint:
        return Path(checkpoint)
    directory = checkpoint_directory(cfg.checkpoint.dir, run_dir)
    found = directory / BEST if (directory / BEST).is_dir() else latest(directory)
    if found is None:
        raise FileNotFoundError(f"run_dir={run_dir}: no checkpoint under {directory}")
    return found


def load_trained(run_dir: Path, checkpoint: Optional[str] = None) -> Trained:
    """The run's model (config from `<run_dir>/.hydra/config.yaml`) with a checkpoint's weights,
    every table whole in this one process (DCP reshards the saved shards on load)."""
    trained = _build(OmegaConf.load(run_dir / ".hydra" / CONFIG_FILE))
    state = {"model": trained.task.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint_path(run_dir, trained.cfg, checkpoint)))
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


def export(trained: Trained, precision: str, output: Path) -> dict:
    """Writes `trained` with `precision` tables to `output`; returns the summary it writes."""
    before = table_bytes(trained.task)
    task = quantize(trained.task, precision)
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(task.state_dict(), tmp / MODEL_FILE)
    OmegaConf.save(trained.cfg, tmp / CONFIG_FILE)
    summary = {"precision": precision, "table_bytes": table_bytes(task), "table_bytes_before": before}
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    shutil.rmtree(output, ignore_errors=True)
    tmp.replace(output)
    return summary


def load_exported(directory: Path) -> Trained:
    """An export directory's model: rebuilt from its config, quantized, then its weights loaded."""
    trained = _build(OmegaConf.load(directory / CONFIG_FILE))
    precision = json.loads((directory / SUMMARY_FILE).read_text())["precision"]
    trained.task = quantize(trained.task, precision)
    with torch.serialization.safe_globals([UInt4Tensor]):
        trained.task.load_state_dict(torch.load(directory / MODEL_FILE))
    return trained

"""A trained run's model, offline: read from a checkpoint, exported as an inference artifact.

The artifact is one directory: the weights (tables in fp32, or TorchRec's quantized
EmbeddingBagCollection in fp16 or row-wise int8/int4, each int row with its own fp16 scale
and bias: FBGEMM's inference TBE; the dense tower in fp32 or bf16), the training config,
the feature pipeline (`pipeline.json`: the raw layout, hashing inputs, normalisation
statistics, and the schema's side tables copied beside it) and `manifest.json` (versions,
source run and checkpoint, sizes, the AUC measured at export, sha256 of every file).

Loading verifies every file against the manifest before reading any, rebuilds the model
from the config (a stored config is merged onto ctr's schema and may name only ctr's own
classes: `load_stored_config`), and reads the weights with `torch.load(weights_only=True)`
from plain tensors (int4 rows stored as their bytes), so no file of an artifact can run
code. Export replaces only a previous export's own files.
"""

import json
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchrec.inference.modules import quantize_embeddings
from torchrec.tensor_types import UInt4Tensor

from ctr.atomic import atomic_directory
from ctr.build import build_input_hashing, build_task
from ctr.config import Config, StorageReservationConfig
from ctr.features.hashing import FeatureHashing
from ctr.models.task import ClickTask
from ctr.parallel.process_group import DistributedEnv
from ctr.train.checkpoint import BEST, checkpoint_directory, latest, sha256_file, verify
from ctr.train.evaluate import evaluate
from ctr.train.safe_dcp import load_state

# `precision` of an export → the dtype TorchRec's quantized tables store (None: the trained fp32 tables).
TABLE_DTYPES = {"fp32": None, "fp16": torch.half, "int8": torch.qint8, "int4": torch.quint4x2}
ARTIFACT_FORMAT = "ctr-inference-artifact/1"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.yaml"
PIPELINE_FILE = "pipeline.json"
MANIFEST_FILE = "manifest.json"
SIDE_TABLES = "side_tables"  # the schema's joined tables, copied: the pipeline reads them
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, PIPELINE_FILE)
_VERSIONED = ("ctr", "torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "hydra-core", "numpy")

# `_target_`s a stored config may name: ctr's own classes, the storage reservation the
# schema names, and TorchRec's proposers that `sharding.proposers` documents.
ALLOWED_TARGET_PREFIX = "ctr."
ALLOWED_TARGETS = frozenset({
    StorageReservationConfig._target_,
    "torchrec.distributed.planner.proposers.GreedyProposer",
    "torchrec.distributed.planner.proposers.UniformProposer",
    "torchrec.distributed.planner.proposers.GridSearchProposer",
})


class ArtifactError(ValueError):
    """An inference artifact refused: missing, modified or truncated files, or weights that
    are not plain tensors; the message names the file."""


@dataclass
class Trained:
    """A model ready to score a source's rows: its config, data source, hashing and task,
    `origin`, the run or export directory it was read from, and the checkpoint read."""

    cfg: DictConfig
    source: object
    hashing: FeatureHashing
    task: ClickTask
    origin: Path
    checkpoint: Optional[Path] = None


@dataclass
class FeatureLayout:
    """The features a model reads, as `build_task` asks a data source for them: what an
    artifact keeps of its training data."""

    dense_names: List[str]
    sparse_names: List[str]
    shared_tables: Dict[str, List[str]]


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


def _build(cfg: DictConfig, source, origin: Path) -> Trained:
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
    cfg = load_stored_config(run_dir / ".hydra" / CONFIG_FILE)
    trained = _build(cfg, instantiate(cfg.data), run_dir)
    path = checkpoint_path(run_dir, trained.cfg, checkpoint)
    verify(path)
    state = {"model": trained.task.state_dict()}
    load_state(state, path)
    trained.task.load_state_dict(state["model"])
    trained.checkpoint = path
    return trained


def _nbytes(tensor: torch.Tensor) -> int:
    # TorchRec's int4 view counts two elements per stored byte.
    return tensor.numel() * tensor.element_size() // (2 if isinstance(tensor, UInt4Tensor) else 1)


def _is_table(name: str) -> bool:
    return ".embedding_bags." in name


def table_bytes(task: torch.nn.Module) -> int:
    """Bytes the embedding tables take as stored; a quantized row includes its fp16 scale
    and bias and FBGEMM's padding of each row to a multiple of 16 bytes."""
    return sum(_nbytes(t) for name, t in task.state_dict().items() if _is_table(name))


def quantize(task: ClickTask, precision: str) -> ClickTask:
    """`task` with its tables in `precision` (`TABLE_DTYPES`): TorchRec's quantized
    EmbeddingBagCollection for fp16/int8/int4, the trained tables for fp32."""
    if precision not in TABLE_DTYPES:
        raise ValueError(f"precision={precision!r}: expected one of {list(TABLE_DTYPES)}")
    dtype = TABLE_DTYPES[precision]
    return task if dtype is None else quantize_embeddings(task, dtype=dtype, inplace=True)


def with_dense_precision(task: ClickTask, dense_precision: str) -> ClickTask:
    """`task`'s model run with `dense_precision`; bf16 also rounds the dense weights to bf16,
    as the artifact stores them, so what export measures is what loading rebuilds."""
    task = ClickTask(task.model, dense_precision)
    if dense_precision == "bf16":
        with torch.no_grad():
            for name, parameter in task.named_parameters():
                if not _is_table(name):
                    parameter.copy_(parameter.to(torch.bfloat16))
    return task


def describe_pipeline(source) -> dict:
    """What turns a raw row of `source`'s training layout into model inputs: the Criteo
    columns and log1p, or the CSV schema; the features; the dense normalisation statistics.
    A source without `meta.json` (synthetic) takes rows already in feature form."""
    meta = getattr(source, "meta", None)
    description = {"dense_names": list(source.dense_names), "sparse_names": list(source.sparse_names),
                   "shared_tables": dict(getattr(source, "shared_tables", {}))}
    if meta is None:
        return {"kind": "features", **description}
    settings = meta["settings"]
    description.update(bag_lengths=meta.get("bag_lengths", {}), dense_transform=meta.get("dense_transform"))
    if meta["source"] == "criteo":
        return {"kind": "criteo", "log1p": settings["log1p"], **description}
    return {"kind": "schema", "schema": settings["schema"], **description}


def _side_tables(pipeline: dict) -> List[Path]:
    """The schema's joined tables (paths relative to its root)."""
    return [Path(join["path"]) for join in pipeline.get("schema", {}).get("joins", [])]


def _versions() -> Dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _plain_weights(task: ClickTask, dense_precision: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The state dict as plain tensors (int4 tables as their bytes), the dense weights in
    `dense_precision`; and the names of the int4 entries."""
    weights, uint4 = {}, []
    for name, tensor in task.state_dict().items():
        if isinstance(tensor, UInt4Tensor):
            tensor = tensor.elem
            uint4.append(name)
        elif dense_precision == "bf16" and not _is_table(name) and tensor.is_floating_point():
            tensor = tensor.to(torch.bfloat16)
        weights[name] = tensor.contiguous()
    return weights, uint4


def _file_records(directory: Path) -> Dict[str, dict]:
    return {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _previous_export(output: Path) -> Optional[dict]:
    try:
        manifest = json.loads((output / MANIFEST_FILE).read_text())
        return manifest if manifest.get("format") == ARTIFACT_FORMAT else None
    except (OSError, ValueError, AttributeError):
        return None


def _check_output(output: Path, origin: Path) -> None:
    """Refuses an `output` export may not replace: the run it reads, a parent of it, or a
    non-empty directory that is not a previous export (or holds files it did not write)."""
    resolved, origin = output.resolve(), origin.resolve()
    if resolved == origin or resolved in origin.parents:
        raise ValueError(f"output={output}: is {origin} or a parent of it; give the export its own directory")
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    previous = _previous_export(output) if output.is_dir() else None
    if previous is None:
        raise ValueError(f"output={output}: exists and is not a previous export (no {MANIFEST_FILE} manifest); "
                         "refusing to replace it")
    written = set(previous["files"]) | {MANIFEST_FILE}
    foreign = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()
                     and str(p.relative_to(output)) not in written)
    if foreign:
        raise ValueError(f"output={output}: a previous export that now also holds {foreign}; refusing to replace it")


def export(trained: Trained, precision: str, output: Path, dense_precision: str = "fp32", split: str = "test",
           batch_size: int = 8192) -> dict:
    """Writes `trained` as an inference artifact to `output`; returns its manifest.

    The tables go to `precision`, the dense tower to `dense_precision`; the artifact's AUC is
    measured on `split` before it is written. `output` may be absent, empty, or a previous
    export, whose files alone are replaced."""
    _check_output(output, trained.origin)
    if str(OmegaConf.select(trained.cfg, "embedding.hashing._target_")).endswith("VocabHashing"):
        raise ValueError("embedding.hashing=vocab: its vocabulary is counted from the training shards and is not "
                         "part of an artifact; export a run trained with modulo or qr hashing")
    before = table_bytes(trained.task)
    task = with_dense_precision(quantize(trained.task, precision), dense_precision)
    env = DistributedEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"),
                         backend="none")
    metrics = evaluate(task, trained.source, split, trained.hashing, env, batch_size)
    pipeline = describe_pipeline(trained.source)
    cfg = OmegaConf.merge(trained.cfg, {"trainer": {"dense_precision": dense_precision}})
    with atomic_directory(output) as tmp:
        weights, uint4 = _plain_weights(task, dense_precision)
        torch.save(weights, tmp / WEIGHTS_FILE)
        OmegaConf.save(cfg, tmp / CONFIG_FILE)
        (tmp / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=2))
        for table in _side_tables(pipeline):
            (tmp / SIDE_TABLES / table).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(pipeline["schema"]["root"]) / table, tmp / SIDE_TABLES / table)
        manifest = {
            "format": ARTIFACT_FORMAT,
            "versions": _versions(),
            "source": {"run_dir": str(trained.origin.resolve()),
                       "checkpoint": str(trained.checkpoint.resolve()) if trained.checkpoint else None},
            "precision": precision,
            "dense_precision": dense_precision,
            "uint4_tensors": uint4,
            "table_bytes": table_bytes(task),
            "table_bytes_before": before,
            "metrics": {"split": split, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}},
            "files": _file_records(tmp),
        }
        manifest["artifact_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify_artifact(directory: Path) -> dict:
    """The artifact's manifest, after every file it lists (the required ones among them)
    matched its recorded size and sha256; `ArtifactError` names the first that does not."""
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path}: not an inference artifact's manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: not a {ARTIFACT_FORMAT} manifest")
    files = manifest.get("files", {})
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ArtifactError(f"{path}: lists no {missing}; the artifact is incomplete")
    for name, record in files.items():
        file = directory / name
        if directory.resolve() not in file.resolve().parents:
            raise ArtifactError(f"{path}: lists {name!r}, which is outside the artifact")
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the artifact")
        size = file.stat().st_size
        if size != record["bytes"]:
            raise ArtifactError(f"{file}: {size} bytes, the manifest records {record['bytes']} (truncated or modified)")
        if sha256_file(file) != record["sha256"]:
            raise ArtifactError(f"{file}: sha256 differs from the manifest's; the file was modified")
    return manifest


def _load_weights(path: Path, uint4: List[str]) -> Dict[str, torch.Tensor]:
    try:
        weights = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or others on a foreign file
        raise ArtifactError(f"{path}: not a file of plain tensors; refused ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise ArtifactError(f"{path}: holds no name → tensor mapping")
    return {name: UInt4Tensor(t) if name in uint4 else t for name, t in weights.items()}


@dataclass
class Artifact:
    """A verified artifact's model: the config, manifest, feature pipeline, layout, hashing and task."""

    directory: Path
    cfg: DictConfig
    manifest: dict
    pipeline: dict
    layout: FeatureLayout
    hashing: FeatureHashing
    task: ClickTask


def load_artifact(directory: Path) -> Artifact:
    """An artifact's model, rebuilt from its config and pipeline with its weights, after
    `verify_artifact`; needs nothing of the training run or its data."""
    directory = Path(directory)
    manifest = verify_artifact(directory)
    cfg = load_stored_config(directory / CONFIG_FILE)
    pipeline = json.loads((directory / PIPELINE_FILE).read_text())
    layout = FeatureLayout(pipeline["dense_names"], pipeline["sparse_names"], pipeline["shared_tables"])
    built = _build(cfg, layout, directory)
    task = quantize(built.task, manifest["precision"])
    weights = _load_weights(directory / WEIGHTS_FILE, manifest["uint4_tensors"])
    try:
        task.load_state_dict(weights)
    except RuntimeError as error:
        raise ArtifactError(f"{directory / WEIGHTS_FILE}: does not fit the model its config builds: {error}") from error
    return Artifact(directory, cfg, manifest, pipeline, layout, built.hashing, task.eval())


def load_exported(directory: Path) -> Trained:
    """An artifact's model with its training data source (`data` of its config), to score a split."""
    artifact = load_artifact(directory)
    return Trained(artifact.cfg, instantiate(artifact.cfg.data), artifact.hashing, artifact.task, Path(directory))

"""Sharded, atomic, verified checkpoints with torch.distributed.checkpoint (DCP).

Layout of `<dir>`:
    step_000000120/            a complete checkpoint: DCP shards (each rank writes its own),
        .metadata                DCP's index, `extra_rank<r>.pt` (step, LR schedule, RNG
        extra_rank0.pt ...       states of rank r, as tensors and plain values) and COMPLETE,
        COMPLETE                 written last: the sha256 of every other file and the config
    step_000000180.partial/    a save in progress, or one a crash interrupted: ignored
    best/                      the best checkpoint by the validation metric

A save writes into `<name>.partial` and is renamed only after every rank has finished
and COMPLETE is written, so a crash at any point leaves the previous checkpoints intact
and loadable. COMPLETE and the rename are rank 0's, so `dir` must be on a filesystem every
rank sees; a save checks that it is. A load verifies every file against COMPLETE and reads
nothing that can run code (`ctr.train.safe_dcp`, `weights_only=True`). DCP reshards on
load: a checkpoint written by N ranks under one sharding plan loads into M ranks under another.
"""

import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ctr.atomic import write_json_atomic
from ctr.train.safe_dcp import load_state

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
PARTIAL_SUFFIX = ".partial"
BEST = "best"
# Each rank's share of the file digests, written into the partial directory; rank 0 finding
# all of them proves every rank wrote into the directory it sees.
DIGESTS_PREFIX = "digests_rank"

# Config keys that may differ between a checkpoint and the run resuming it: where and how
# often to save, what to show, when to stop or evaluate. None changes what the model learns.
RESUME_INDEPENDENT_KEYS = (
    "checkpoint",
    "distributed.backend",
    "data.batch_size",
    "data.max_epochs",
    "trainer.progress_bar",
    "trainer.tensorboard",
    "trainer.log_every_steps",
    "trainer.max_steps",
    "trainer.eval_every",
    "trainer.eval_every_steps",
    "trainer.eval_batch_size",
    "trainer.early_stopping_patience",
)


class CheckpointError(RuntimeError):
    """A checkpoint refused: incomplete, failing verification, or from a different config."""


def extra_state(step: int, scheduler: Any, device: torch.device) -> Dict[str, Any]:
    """A rank's non-model state as tensors and plain values, loadable with `weights_only=True`."""
    generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": {"generator": generator, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {"step": step, "scheduler": scheduler.state_dict(), "rng": rng}


def restore_rng(rng: Dict[str, Any], device: torch.device) -> None:
    """Sets the RNG states `extra_state` recorded; a CUDA state only where this rank is on CUDA."""
    torch.set_rng_state(rng["torch"])
    numpy = rng["numpy"]
    np.random.set_state((numpy["generator"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = rng["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


def checkpoint_directory(checkpoint_dir: Optional[str], run_dir: Path) -> Path:
    """`checkpoint.dir`, or `<run dir>/checkpoints` when it is null."""
    return Path(checkpoint_dir) if checkpoint_dir else run_dir / "checkpoints"


def is_complete(path: Path) -> bool:
    return path.is_dir() and not path.name.endswith(PARTIAL_SUFFIX) and (path / COMPLETE).is_file()


def complete_steps(directory: Path) -> List[Path]:
    """Complete step checkpoints in `directory`, oldest first."""
    found = [p for p in directory.glob("step_*") if is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest(directory: Path) -> Optional[Path]:
    steps = complete_steps(directory)
    return steps[-1] if steps else None


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_files(directory: Path) -> List[str]:
    """Names of the files a checkpoint's COMPLETE covers: all but COMPLETE and the digest shares."""
    return sorted(p.name for p in directory.iterdir()
                  if p.is_file() and p.name != COMPLETE and not p.name.startswith(DIGESTS_PREFIX))


def record(path: Path) -> Dict[str, Any]:
    """What a complete checkpoint's COMPLETE recorded: its step, files, config and the saver's info."""
    return json.loads((path / COMPLETE).read_text())


def verify_share(path: Path, rank: int = 0, world_size: int = 1) -> Optional[str]:
    """What is wrong with rank `rank`'s share of `path`'s files (all of them for one process), or None."""
    if not is_complete(path):
        return f"{path}: not a complete checkpoint (no {COMPLETE} marker)"
    try:
        files = record(path).get("files")
    except ValueError as error:
        return f"{path / COMPLETE}: not valid JSON ({error})"
    if not isinstance(files, dict) or not files:
        return f"{path / COMPLETE}: lists no file digests (written before ctr verified checkpoints, or edited)"
    if rank == 0 and sorted(files) != checkpoint_files(path):
        return f"{path}: holds files {checkpoint_files(path)}, but {COMPLETE} lists {sorted(files)}"
    for name, digest in sorted(files.items())[rank::world_size]:
        if Path(name).name != name:
            return f"{path / COMPLETE}: lists {name!r}, not a file name"
        file = path / name
        if not file.is_file():
            return f"{file}: missing"
        if sha256_file(file) != digest:
            return f"{file}: sha256 differs from the one recorded in {COMPLETE} (corrupt or modified)"
    return None


def verify(path: Path) -> None:
    """Raises `CheckpointError` unless every file of `path` matches its recorded sha256 (one process)."""
    problem = verify_share(path)
    if problem:
        raise CheckpointError(problem)


def training_config(cfg: DictConfig) -> Dict[str, Any]:
    """The resolved config a checkpoint records, to compare a resuming run's with."""
    return OmegaConf.to_container(cfg, resolve=True)


def _flatten(node: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _covered(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(recorded: Dict[str, Any], current: Dict[str, Any], allowed: Sequence[str] = ()) -> List[str]:
    """Dotted keys whose values differ between two configs, except those a resume may change
    (`RESUME_INDEPENDENT_KEYS`) and those `allowed` (keys or their parents).

    >>> config_differences({"trainer": {"epochs": 1}}, {"trainer": {"epochs": 2}})
    ['trainer.epochs']
    """
    old, new = dict(_flatten(recorded)), dict(_flatten(current))
    skipped = (*RESUME_INDEPENDENT_KEYS, *allowed)
    return sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>")
                  and not _covered(k, skipped))


class Checkpointer:
    """Saves and restores model, optimizers, LR schedule, data position and RNG states."""

    def __init__(self, directory: Path, keep_last: int, device: torch.device, config: Dict[str, Any]) -> None:
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last={keep_last}: expected at least 1")
        self.directory = directory
        self.keep_last = keep_last
        self.device = device  # where this rank's collectives run (NCCL: CUDA only)
        self.config = config
        self._verified: Optional[Path] = None

    def _any_rank(self, failed: bool) -> bool:
        flag = torch.tensor([int(failed)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _agree(self, problem: Optional[str], what: str) -> Optional[str]:
        """`problem` of this rank, or another rank's (by name), once every rank has looked."""
        if problem:
            log.error("rank %d: %s", dist.get_rank(), problem)
        if self._any_rank(problem is not None):
            return problem or f"{what}: refused by another rank (see its log)"
        return None

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        name: Optional[str] = None,
        info: Optional[Dict[str, Any]] = None,
    ) -> Path:
        """Writes a checkpoint of the state after `step` steps (a collective: call on all ranks)."""
        rank, world_size = dist.get_rank(), dist.get_world_size()
        final = self.directory / (name or f"step_{step:09d}")
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        started = time.perf_counter()
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        dist.barrier()
        partial.mkdir(parents=True, exist_ok=True)  # a rank that does not share rank 0's filesystem
        dcp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint_id=str(partial))
        torch.save(extra_state(step, scheduler, self.device), partial / f"extra_rank{rank}.pt")
        dist.barrier()
        files = checkpoint_files(partial)
        write_json_atomic(partial / f"{DIGESTS_PREFIX}{rank}.json",
                          {name: sha256_file(partial / name) for name in files[rank::world_size]})
        dist.barrier()
        problem = self._agree(_gather_digests(partial, world_size) if rank == 0 else None, str(partial))
        if problem:
            raise CheckpointError(problem)
        if rank == 0:
            digests = {}
            for share in range(world_size):
                digests.update(json.loads((partial / f"{DIGESTS_PREFIX}{share}.json").read_text()))
                (partial / f"{DIGESTS_PREFIX}{share}.json").unlink()
            record = {"step": step, "world_size": world_size, "time": time.time(), **(info or {}),
                      "files": dict(sorted(digests.items())), "config": self.config}
            (partial / COMPLETE).write_text(json.dumps(record, indent=2))
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            self._prune(keep_steps=name is None)
        dist.barrier()
        if rank == 0:
            log.info("checkpoint %s written in %.2f s", final, time.perf_counter() - started)
        return final

    def _prune(self, keep_steps: bool) -> None:
        """Rank 0, after a save: removes the step checkpoints past `keep_last` (when a step was
        saved) and any `.partial` a crashed save left (every rank has finished this one)."""
        if keep_steps:
            for old in complete_steps(self.directory)[: -self.keep_last]:
                shutil.rmtree(old)
        for stale in self.directory.glob(f"*{PARTIAL_SUFFIX}"):
            shutil.rmtree(stale)

    def verify(self, path: Path) -> Optional[str]:
        """What is wrong with checkpoint `path`, or None; every rank hashes its share of the files."""
        if path == self._verified:
            return None
        problem = self._agree(verify_share(path, dist.get_rank(), dist.get_world_size()), str(path))
        if problem is None:
            self._verified = path
        return problem

    def resume_point(self, resume: str, allow_config_change: Sequence[str] = ()) -> Optional[Path]:
        """`checkpoint.resume`: none; a path; or auto, the latest complete checkpoint in the
        directory that passes verification (falling back to older ones) and was written under
        this config, apart from the keys in `allow_config_change` (`config_differences`)."""
        if resume == "none":
            return None
        if resume != "auto":
            return Path(resume)
        candidates = complete_steps(self.directory)
        for candidate in reversed(candidates):
            problem = self.verify(candidate)
            if problem is None:
                differences = config_differences(record(candidate).get("config") or {}, self.config,
                                                 allow_config_change)
                if differences:
                    raise CheckpointError(
                        f"checkpoint.resume=auto: {candidate} was written with a different config; keys that "
                        f"differ: {differences}. Use a new run directory, or allow them, e.g. "
                        f"checkpoint.allow_config_change=[{','.join(differences)}]"
                    )
                return candidate
            if dist.get_rank() == 0:
                log.warning("checkpoint %s refused (%s); falling back to the previous complete checkpoint",
                            candidate, problem)
        if candidates:
            raise CheckpointError(f"checkpoint.resume=auto: no checkpoint in {self.directory} passed verification")
        return None

    def load(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        weights_only: bool = False,
    ) -> int:
        """Restores a complete, verified checkpoint in place; returns the number of steps it had done.

        With `weights_only`, only the model is loaded (into any world size or sharding
        plan) and optimizers, schedule and data position start afresh.
        """
        problem = self.verify(path)
        if problem:
            raise CheckpointError(f"checkpoint.resume={path}: {problem}")
        started = time.perf_counter()
        state: Dict[str, Any] = {"model": model.state_dict()}
        if not weights_only:
            optimizer.init_state()  # allocate optimizer state so DCP can load into it
            state["optimizer"] = optimizer.state_dict()
        load_state(state, path)
        model.load_state_dict(state["model"])
        if weights_only:
            step = 0
        else:
            optimizer.load_state_dict(state["optimizer"])
            own = path / f"extra_rank{dist.get_rank()}.pt"
            extra = torch.load(own if own.exists() else path / "extra_rank0.pt", weights_only=True)
            scheduler.load_state_dict(extra["scheduler"])
            # TorchRec's optimizers do not restore their groups' rates; the schedule knows them.
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
            restore_rng(extra["rng"], self.device)
            step = int(extra["step"])
        if dist.get_rank() == 0:
            done = f"loaded the weights of {path}" if weights_only else f"resumed from {path} (step {step})"
            log.info("%s in %.2f s", done, time.perf_counter() - started)
        return step


def _gather_digests(partial: Path, world_size: int) -> Optional[str]:
    """Rank 0's check that it sees every rank's digest share, and that they cover every file."""
    missing = [r for r in range(world_size) if not (partial / f"{DIGESTS_PREFIX}{r}.json").is_file()]
    if missing:
        return (f"{partial}: rank 0 does not see the files of rank(s) {missing}; checkpoint.dir must be on a "
                f"filesystem every rank shares (rank 0 alone writes {COMPLETE} and renames the directory)")
    covered = set()
    for r in range(world_size):
        covered.update(json.loads((partial / f"{DIGESTS_PREFIX}{r}.json").read_text()))
    if covered != set(checkpoint_files(partial)):
        return (f"{partial}: the ranks saw different files ({sorted(covered ^ set(checkpoint_files(partial)))}); "
                f"checkpoint.dir must be on a filesystem every rank shares")
    return None


def best_record(directory: Path) -> Optional[Dict[str, Any]]:
    """What `<directory>/best` recorded (its step, metric and value), if a complete one exists."""
    best = directory / BEST
    return record(best) if is_complete(best) else None


def best_value(directory: Path) -> Optional[float]:
    """The metric value recorded with `<directory>/best`, if a complete one exists."""
    record = best_record(directory)
    return record.get("value") if record else None

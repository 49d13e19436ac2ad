"""Sharded, atomic checkpoints with torch.distributed.checkpoint (DCP).

Layout of `<dir>`:
    step_000000120/            a complete checkpoint: DCP shards (each rank writes its own),
        .metadata                DCP's index, `extra_rank<r>.pt` (step, LR schedule, RNG
        extra_rank0.pt ...       states of rank r) and COMPLETE, written last
        COMPLETE
    step_000000180.partial/    a save in progress, or one a crash interrupted: ignored
    best/                      the best checkpoint by the validation metric

A save writes into `<name>.partial` and is renamed only after every rank has finished
and COMPLETE is written, so a crash at any point leaves the previous checkpoints intact
and loadable. DCP reshards on load: a checkpoint written by N ranks under one sharding
plan loads into M ranks under another.
"""

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
PARTIAL_SUFFIX = ".partial"
BEST = "best"


def _rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


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


class Checkpointer:
    """Saves and restores model, optimizers, LR schedule, data position and RNG states."""

    def __init__(self, directory: Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last={keep_last}: expected at least 1")
        self.directory = directory
        self.keep_last = keep_last

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
        rank = dist.get_rank()
        final = self.directory / (name or f"step_{step:09d}")
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        started = time.perf_counter()
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        dist.barrier()
        dcp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint_id=str(partial))
        torch.save(
            {"step": step, "scheduler": scheduler.state_dict(), "rng": _rng_state()},
            partial / f"extra_rank{rank}.pt",
        )
        dist.barrier()
        if rank == 0:
            record = {"step": step, "world_size": dist.get_world_size(), "time": time.time(), **(info or {})}
            (partial / COMPLETE).write_text(json.dumps(record, indent=2))
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            if name is None:
                for old in complete_steps(self.directory)[: -self.keep_last]:
                    shutil.rmtree(old)
        dist.barrier()
        if rank == 0:
            log.info("checkpoint %s written in %.2f s", final, time.perf_counter() - started)
        return final

    def load(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        weights_only: bool = False,
    ) -> int:
        """Restores a complete checkpoint in place; returns the number of steps it had done.

        With `weights_only`, only the model is loaded (into any world size or sharding
        plan) and optimizers, schedule and data position start afresh.
        """
        if not is_complete(path):
            raise FileNotFoundError(f"checkpoint.resume={path}: not a complete checkpoint (no {COMPLETE} marker)")
        started = time.perf_counter()
        state: Dict[str, Any] = {"model": model.state_dict()}
        if not weights_only:
            optimizer.init_state()  # allocate optimizer state so DCP can load into it
            state["optimizer"] = optimizer.state_dict()
        dcp.load(state, checkpoint_id=str(path))
        model.load_state_dict(state["model"])
        if weights_only:
            step = 0
        else:
            optimizer.load_state_dict(state["optimizer"])
            own = path / f"extra_rank{dist.get_rank()}.pt"
            extra = torch.load(own if own.exists() else path / "extra_rank0.pt", weights_only=False)
            scheduler.load_state_dict(extra["scheduler"])
            # TorchRec's optimizers do not restore their groups' rates; the schedule knows them.
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr
            _set_rng_state(extra["rng"])
            step = int(extra["step"])
        if dist.get_rank() == 0:
            log.info("resumed from %s (step %d) in %.2f s", path, step, time.perf_counter() - started)
        return step


def best_value(directory: Path) -> Optional[float]:
    """The metric value recorded with `<directory>/best`, if a complete one exists."""
    best = directory / BEST
    return json.loads((best / COMPLETE).read_text()).get("value") if is_complete(best) else None

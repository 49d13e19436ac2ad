"""Runs a function on N local ranks, the way torchrun would, for tests.

The function joins the process group with a backend it names: gloo for the CPU tests (not
`auto`, which on a GPU host would give each rank cuda:<rank>, a GPU a 1-GPU host lacks).
"""

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Tuple

import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf

from ctr.build import Trainable, build_trainable
from ctr.parallel.process_group import INIT_METHOD_ENV, DistributedEnv, init_distributed, shutdown


def _entry(rank: int, fn: Callable, world_size: int, init_method: str, args: Tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
    )
    os.environ[INIT_METHOD_ENV] = init_method
    fn(*args)
    # The rank's work is done and its results are written. Leave without the interpreter's
    # teardown, where a C++ thread still joinable in a library's static destructor can
    # abort the process ("terminate called without an active exception", SIGABRT) now and
    # then, after a correct run. A failing `fn` raises before this line
    # and is reported as usual.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn: Callable, world_size: int, *args: Any) -> None:
    """Calls fn(*args) on each of `world_size` spawned ranks; re-raises any rank's failure.

    The ranks meet through a fresh file rendezvous, not a TCP port: a port picked free
    can be taken by another process before rank 0 binds it, which made tests flaky.
    """
    with tempfile.TemporaryDirectory() as scratch:
        init_method = f"file://{Path(scratch) / 'rendezvous'}"
        mp.start_processes(_entry, args=(fn, world_size, init_method, args), nprocs=world_size, start_method="spawn")


@contextmanager
def trainable_rank(cfg_dict: dict) -> Iterator[Tuple[DictConfig, DistributedEnv, Trainable]]:
    """On a spawned rank: joins the gloo group and builds the job's sharded model (seeded
    alike on every rank); leaves the group afterwards."""
    cfg = OmegaConf.create(cfg_dict)
    env = init_distributed("gloo")
    try:
        torch.manual_seed(0)
        yield cfg, env, build_trainable(cfg, env)
    finally:
        shutdown()

"""Runs a function on N local ranks (gloo, CPU), the way torchrun would, for tests."""

import os
import socket
from typing import Any, Callable, Tuple

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, args: Tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    fn(*args)


def run_ranks(fn: Callable, world_size: int, *args: Any) -> None:
    """Calls fn(*args) on each of `world_size` spawned ranks; re-raises any rank's failure."""
    mp.start_processes(_entry, args=(fn, world_size, _free_port(), args), nprocs=world_size, start_method="spawn")

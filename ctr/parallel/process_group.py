"""Joins (or creates) the process group and picks the device and backend for this rank."""

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from ctr.config import Backend

INIT_METHOD_ENV = "CTR_INIT_METHOD"


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_backend(requested: str) -> str:
    """`auto` (`distributed.backend`) is NCCL where CUDA is present, gloo otherwise."""
    if requested == Backend.auto:
        return "nccl" if torch.cuda.is_available() else "gloo"
    if requested == Backend.nccl and not torch.cuda.is_available():
        raise ValueError("distributed.backend=nccl needs CUDA, which this machine lacks; use gloo or auto")
    return str(requested)


def _restart_scoped_agent_store(world_size: int) -> Optional[dist.Store]:
    """Under torchrun, the agent's store with keys scoped to this restart attempt.

    After `torchrun --max-restarts` restarts a failed job, the new ranks meet in the same
    agent store as the dead ones; without a per-attempt scope, gloo could read a dead
    rank's address and hang connecting to it (seen here in about half of the restarts).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
        timeout=timedelta(minutes=5),
    )
    return dist.PrefixStore(f"ctr/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", client)


def init_distributed(backend: str = "auto") -> DistributedEnv:
    """Reads the rank from torchrun's environment; a plain single process becomes rank 0 of 1.

    The rendezvous is torchrun's (env://) unless CTR_INIT_METHOD names another.

    One GPU per rank (cuda:LOCAL_RANK) with NCCL; the CPU with gloo.
    """
    backend = resolve_backend(backend)
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
        )
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # NCCL: the group is bound to this rank's GPU, so barriers and object collectives use it
        device_id = device if backend == "nccl" else None
        store = _restart_scoped_agent_store(world_size)
        if store is not None:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, device_id=device_id)
        else:
            # e.g. file:///shared/fs/rendezvous: no port to pick, so no race for one
            init_method = os.environ.get(INIT_METHOD_ENV, "env://")
            dist.init_process_group(
                backend=backend, init_method=init_method, rank=rank, world_size=world_size, device_id=device_id,
            )
    return DistributedEnv(rank, world_size, local_rank, local_world_size, device, backend)


def shutdown(failed: bool = False) -> None:
    """Tears the group down explicitly: left to interpreter exit, a 2-rank TorchRec job can
    abort with "terminate called without an active exception" and a non-zero status.

    After a failure the barrier is skipped: the peers may be gone, and waiting for them
    would only bury the real error under a second one.
    """
    if dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


Result = TypeVar("Result")


def in_process_group(job: Callable[..., Result], backend: str, *args: Any) -> Result:
    """Joins the process group, returns job(env, *args), and tears the group down (`shutdown`)."""
    env = init_distributed(backend)
    try:
        result = job(env, *args)
    except BaseException:
        shutdown(failed=True)
        raise
    shutdown()
    return result

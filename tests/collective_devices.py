"""Catches tensors that reach a `torch.distributed` collective off the rank's device, for tests.

NCCL takes CUDA tensors only, but on a CPU test machine the rank's device is the CPU, so a
tensor built without `device=` lands on the right device by luck and its `.device` alone
cannot show the bug. The recorder therefore also follows where a tensor came from:

- a tensor that the project's own code (ctr/, benchmarks/, launch/) creates with a factory
  (`torch.tensor`, `torch.empty`, ...) without naming a device, or takes to the host
  (`torch.from_numpy`, `.cpu()`, `.numpy()`-backed), is a *host* tensor: on a GPU run it
  would be in host memory;
- whatever is computed from a host tensor is a host tensor too;
- `.to(<rank device>)` gives a tensor on the rank's device again.

Every tensor handed to a collective (and the output buffer of `ShardedTensor.gather`) must
be on the rank's device and not a host tensor; each one that is not is recorded with the
project frame that called the collective.
"""

import functools
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

REPO = Path(__file__).resolve().parents[1]
PROJECT_DIRS = tuple(str(REPO / part) + "/" for part in ("ctr", "benchmarks", "launch"))
TORCH_DIR = str(Path(torch.__file__).parent) + "/"

COLLECTIVES = (
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_coalesced", "all_gather_into_tensor",
    "_all_gather_base", "gather", "scatter", "broadcast", "reduce", "reduce_scatter", "reduce_scatter_tensor",
    "_reduce_scatter_base", "all_to_all", "all_to_all_single", "send", "recv", "isend", "irecv",
)
FACTORIES = {
    torch.tensor, torch.as_tensor, torch.empty, torch.zeros, torch.ones, torch.full, torch.arange, torch.rand,
    torch.randn, torch.randint, torch.linspace, torch.eye, torch.empty_strided, torch.scalar_tensor,
}
TO_HOST = {torch.from_numpy, torch.Tensor.cpu}


def _caller_file() -> str:
    """The file of the innermost frame outside torch and this module: who asked for the op."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH_DIR)
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else ""


def _tensors(args: Any, kwargs: Any) -> List[torch.Tensor]:
    leaves, _ = tree_flatten((args, kwargs))
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _target_device(args: tuple, kwargs: dict) -> Any:
    """The device a `Tensor.to` call names, if it names one."""
    for candidate in (kwargs.get("device"), *args[1:]):
        if isinstance(candidate, (torch.device, str)):
            return torch.device(candidate)
    return None


class CollectiveDevices(TorchFunctionMode):
    """While entered (on one rank), records tensors off `device` that reach collectives."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.violations: List[str] = []
        self._host = WeakIdKeyDictionary()  # host tensors, by identity (a tensor's == is elementwise)
        self._originals: dict = {}

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = _tensors(args, kwargs)
        if func is torch.Tensor.to and _target_device(args, kwargs) == self.device:
            if result is args[0] and result in self._host:
                return result.view_as(result)  # a distinct tensor "on the device", as on a GPU
            return result
        if func is torch.Tensor.copy_:
            return result  # the destination keeps its own placement
        is_host = (
            (func in FACTORIES and kwargs.get("device") is None and _caller_file().startswith(PROJECT_DIRS))
            or (func in TO_HOST and _caller_file().startswith(PROJECT_DIRS))
            or any(t in self._host for t in inputs)
        )
        if is_host:
            for output in _tensors(result, {}):
                self._host[output] = True
        return result

    def check(self, what: str, tensors: List[torch.Tensor]) -> None:
        for tensor in tensors:
            if tensor.device != self.device or tensor in self._host:
                where = "host memory" if tensor in self._host else str(tensor.device)
                frames = [f for f in traceback.extract_stack() if f.filename.startswith(PROJECT_DIRS)]
                caller = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "outside the project"
                self.violations.append(f"{what} got a tensor in {where}, not on {self.device} ({caller})")

    def _wrap(self, name: str, collective: Callable) -> Callable:
        @functools.wraps(collective)
        def checked(*args: Any, **kwargs: Any) -> Any:
            self.check(name, _tensors(args, kwargs))
            return collective(*args, **kwargs)

        return checked

    def __enter__(self) -> "CollectiveDevices":
        for name in COLLECTIVES:
            original = getattr(c10d, name)
            self._originals[name] = original
            checked = self._wrap(name, original)
            setattr(c10d, name, checked)
            if getattr(dist, name, None) is original:
                setattr(dist, name, checked)
        gather = ShardedTensor.gather
        self._originals["ShardedTensor.gather"] = gather

        def checked_gather(sharded: ShardedTensor, dst: int = 0, out: Any = None, **kwargs: Any) -> None:
            self.check("ShardedTensor.gather(out=...)", [out] if out is not None else [])
            return gather(sharded, dst, out, **kwargs)

        ShardedTensor.gather = checked_gather
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        ShardedTensor.gather = self._originals.pop("ShardedTensor.gather")
        for name, original in self._originals.items():
            if getattr(dist, name, None) is getattr(c10d, name):
                setattr(dist, name, original)
            setattr(c10d, name, original)
        self._originals.clear()


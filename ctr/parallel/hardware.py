"""What the machine has: device and host memory for the planner, the CPU's bf16 support.

TorchRec's planner assumes 32 GiB of HBM and 128 GiB of host memory per rank unless told;
on an 80–141 GB card `sharding=auto` would plan for a quarter of it, and on a small host
for memory it does not have. The facts are read here and the planner's assumptions are
recorded beside the plan.
"""

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torchrec.distributed.planner.constants import DDR_CAP, HBM_CAP

GIB = 1024**3
# Flags of CPUs whose bf16 matmul runs natively (x86: AVX-512 BF16, AMX; Arm: the BF16 extension).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# CPU flags a benchmark records next to its figures: they decide what its matmuls can reach.
RECORDED_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile", "amx_bf16", "bf16", "asimd")


@dataclass(frozen=True)
class MemoryFacts:
    """Memory per rank the planner may use, and where each figure came from.

    `hbm_bytes` is one GPU's total memory (`hbm_free_bytes` what was free when read);
    `host_bytes` is the host's physical memory shared by the node's ranks. A figure not
    read from this machine is TorchRec's default, and its source says so.
    """

    hbm_bytes: int
    host_bytes: int
    hbm_source: str
    host_source: str
    hbm_free_bytes: Optional[int] = None

    def as_dict(self) -> dict:
        return asdict(self)


def host_memory_bytes() -> int:
    """Physical memory of this host (os.sysconf: the MemTotal of /proc/meminfo)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_facts(device_type: str, local_world_size: int, on_this_machine: bool = True) -> MemoryFacts:
    """Per-rank memory for planning `local_world_size` ranks per node of `device_type`.

    `on_this_machine` False (planning some other cluster) keeps TorchRec's defaults; so does
    a CUDA plan on a machine without CUDA.
    """
    if on_this_machine:
        host = host_memory_bytes() // local_world_size
        host_source = f"this host's memory ({host_memory_bytes() / GIB:.1f} GiB) / {local_world_size} local ranks"
    else:
        host, host_source = DDR_CAP, "TorchRec's default (not planning for this machine)"
    if device_type != "cuda":
        return MemoryFacts(HBM_CAP, host, "TorchRec's default, unused (a CPU job)", host_source)
    if not (on_this_machine and torch.cuda.is_available()):
        return MemoryFacts(HBM_CAP, host, "TorchRec's default (no GPU of this job to read)", host_source)
    index = torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    free, _ = torch.cuda.mem_get_info(index)
    return MemoryFacts(properties.total_memory, host, f"{properties.name}: total memory", host_source, free)


def cpu_flags() -> List[str]:
    """This CPU's flags from /proc/cpuinfo (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return line.split(":", 1)[1].split()
    return []


def cpu_runs_bf16_natively() -> bool:
    """Whether this CPU has bf16 instructions. Without them (AVX2 only), a bf16 matmul was
    measured 60–90× slower than fp32 on this project's machines. Where /proc/cpuinfo says
    nothing, oneDNN's own check (`_is_mkldnn_bf16_supported`) decides."""
    flags = cpu_flags()
    if flags:
        return any(flag in flags for flag in BF16_CPU_FLAGS)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_cpu_refusal() -> str:
    """Why bf16 is refused on this CPU (the message of `check_dense_precision`)."""
    recorded = [flag for flag in cpu_flags() if flag in RECORDED_CPU_FLAGS]
    return (
        f"this CPU has no bf16 instructions (none of {list(BF16_CPU_FLAGS)} among its flags {recorded}): "
        "its bf16 matmuls are emulated, measured 60-90x slower than fp32 on an AVX2-only CPU"
    )


def check_dense_precision(precision: str, device: torch.device) -> None:
    """Refuses `trainer.dense_precision=bf16` on a CPU without bf16 instructions: the job would
    run many times slower than in fp32, for no saving of memory worth having on a CPU."""
    if precision == "bf16" and device.type == "cpu" and not cpu_runs_bf16_natively():
        raise ValueError(f"trainer.dense_precision=bf16: {bf16_cpu_refusal()}; use trainer.dense_precision=fp32")

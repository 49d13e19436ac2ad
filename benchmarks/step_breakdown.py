"""Where a training step's time goes, from torch.profiler's events.

Each event's own (self) time goes to the first category matched by its name or, failing
that, by the nearest enclosing event's name: TorchRec's pipeline marks its stages
(`## forward N ##`, `## backward N ##`, `## optimizer N ##`, `## start_sparse_data_dist N ##`,
...), its sharded modules mark their lookups (`[lookup]_...`) and output distribution
(`[output_dist]_...`), and FBGEMM's kernels and the collectives have their own names. What
is left of the step's wall time is the loop's own Python (`other`) on CPU, and on a GPU
the time no kernel ran. On CPU an event's time is its own CPU time; on a GPU it is the
device time of the kernels it launched itself (`self_device_time_total`), since there
the host only queues work and its times would show launch costs, not where the step goes.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

# (category, substrings of an event name), first match wins; specific names before stages.
CATEGORIES: Sequence[Tuple[str, Tuple[str, ...]]] = (
    ("all_reduce", ("allreduce", "all_reduce")),
    ("all_to_all", ("all_to_all", "alltoall", "[output_dist]")),
    ("fused_sparse_update", ("split_embedding_backward",)),
    ("embedding_forward", ("[lookup]", "split_embedding_codegen_forward", "permute_pooled_embs")),
    ("input_distribution", ("sparse_data_dist", "[input_dist]", "copy_batch_to_gpu", "wait_for_batch")),
    ("data", ("## next_batch", "## load_batch")),
    ("dense_optimizer", ("## optimizer", "## zero_grad")),
    ("dense_forward", ("## forward",)),
    ("dense_backward", ("## backward",)),
)
ORDER = [name for name, _ in CATEGORIES] + ["other"]


def category(name: str) -> Optional[str]:
    return next((cat for cat, keys in CATEGORIES if any(key in name for key in keys)), None)


def classify(event: FunctionEvent) -> Optional[str]:
    """The category of `event` or of its nearest enclosing event that has one."""
    while event is not None:
        found = category(event.name)
        if found is not None:
            return found
        event = event.cpu_parent
    return None


def own_seconds(event: FunctionEvent, device: torch.device) -> float:
    """The time an operator (a CPU-side event) accounts for itself on `device`: CPU time, or
    on CUDA the device time of the kernels it launched."""
    return (event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6


def breakdown(run: Callable[[], List[float]], steps: int, device: torch.device) -> Dict[str, float]:
    """Seconds per step of each category while `run()` trains `steps` steps and returns their times."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step_seconds = run()
    totals = dict.fromkeys(ORDER, 0.0)
    for event in prof.events():
        if event.device_type != DeviceType.CPU:
            continue  # a kernel: its time is counted in the operator that launched it
        found = classify(event)
        if found is not None:
            totals[found] += own_seconds(event, device)
    # `run` drops its first step (pipeline set-up) from `step_seconds`; scale the events alike.
    profiled_steps = steps + 1
    per_step = {name: seconds / profiled_steps for name, seconds in totals.items()}
    wall = sum(step_seconds) / len(step_seconds)
    per_step["other"] = max(0.0, wall - sum(per_step.values()))
    per_step["step (wall, under the profiler)"] = wall
    return per_step

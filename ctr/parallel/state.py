"""Moving whole (unsharded) tensors in and out of a sharded model's state.

Used to start a sharded model from known weights (an unsharded model, a reference run)
and to collect a trained model's full tables on one rank (export, comparison).
"""

from typing import Collection, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def _local_blocks(target: Union[torch.Tensor, ShardedTensor]) -> Iterator[Tuple[torch.Tensor, Tuple[slice, ...]]]:
    """This rank's parts of an entry, each with the slice of the whole tensor it holds
    (a shard's row and column offsets; a replicated tensor: all of it)."""
    if not isinstance(target, ShardedTensor):
        yield target, tuple(slice(0, size) for size in target.shape)
        return
    for shard in target.local_shards():
        yield shard.tensor, tuple(
            slice(offset, offset + size) for offset, size in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
        )


def write_rows(target: Union[torch.Tensor, ShardedTensor], rows: torch.Tensor, values: torch.Tensor) -> None:
    """Copies `values[i]` into row `rows[i]` of a 2-d entry (a table's weight), in place:
    each local shard takes the rows and columns it holds."""
    with torch.no_grad():
        for local, (row_block, column_block) in _local_blocks(target):
            inside = (rows >= row_block.start) & (rows < row_block.stop)
            local[(rows[inside] - row_block.start).to(local.device)] = values[inside][:, column_block].to(local)


def load_full_state(model: nn.Module, full_state: Mapping[str, torch.Tensor]) -> None:
    """Copies each full tensor into this rank's part of the matching entry, in place.

    Works for every sharding: a sharded table's local shards take their slice (by the
    shard's row and column offsets); replicated tensors take the whole tensor.
    """
    state = model.state_dict()
    missing = sorted(set(state) - set(full_state))
    if missing:
        raise KeyError(f"full state lacks {len(missing)} entries of the model, e.g. {missing[:3]}")
    with torch.no_grad():
        for key, target in state.items():
            source = full_state[key]
            if tuple(source.shape) != tuple(target.size()):
                raise ValueError(f"{key}: full tensor has shape {tuple(source.shape)}, model expects {tuple(target.size())}")
            for local, index in _local_blocks(target):
                local.copy_(source[index])


def full_state_dict(model: nn.Module, device: torch.device, dst: int = 0,
                    keys: Optional[Collection[str]] = None) -> Optional[Dict[str, torch.Tensor]]:
    """Gathers every entry (or those named in `keys`), whole, onto rank `dst` (a collective: call on all ranks).

    The shards meet on `device`, the rank's device (where the shards live: NCCL gathers
    CUDA tensors only). Returns the dict, in host memory, on `dst` and None elsewhere.
    """
    is_dst = dist.get_rank() == dst
    full: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if keys is not None and key not in keys:
            continue
        if isinstance(value, ShardedTensor):
            out = torch.empty(value.size(), dtype=value.dtype, device=device) if is_dst else None
            value.gather(dst=dst, out=out)
            if is_dst:
                full[key] = out.cpu()
        elif is_dst:
            full[key] = value.detach().cpu().clone()
    return full if is_dst else None

"""Wraps a model in DistributedModelParallel: tables sharded by the plan, the rest under DDP."""

from typing import Dict, Optional

from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import QuantizedCommCodecs, ShardingPlan

from ctr.parallel.planner import sharders
from ctr.parallel.process_group import DistributedEnv


def distribute(
    module: nn.Module,
    env: DistributedEnv,
    plan: ShardingPlan,
    qcomm_codecs_registry: Optional[Dict[str, QuantizedCommCodecs]] = None,
) -> DistributedModelParallel:
    """Shards `module` by `plan` on this rank's device, sending embeddings with the given codecs.

    Tables may be on the meta device: each rank then allocates only its own shards.
    """
    return DistributedModelParallel(
        module=module,
        device=env.device,
        plan=plan,
        sharders=sharders(qcomm_codecs_registry),
    )

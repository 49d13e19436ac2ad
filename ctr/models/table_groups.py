"""How a model's embedding tables train: the groups that share one optimizer setting.

A model names its groups (`table_groups()`), the way TorchRec's `dlrm_main.py` applies the
in-backward optimizer to a named submodule; the builder (`ctr.build`) turns each group into
an optimizer from the config, so sharding and optimizers need to know no model.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

from torch import nn


@dataclass(frozen=True)
class TableGroup:
    """Tables trained by one optimizer setting.

    Args:
        collections: the group's EmbeddingBagCollections (after sharding, the sharded
            modules that replaced them).
        settings: the key under `optimizer` with the group's own `name`, `lr` and `eps`
            (a null field: the sparse optimizer's); None: `optimizer.sparse*` itself.
        lr_scale: multiplies the group's learning rate.
        weight_decay_scale: multiplies the group's weight decay (L2 penalty).
    """

    collections: Sequence[nn.Module]
    settings: Optional[str] = None
    lr_scale: float = 1.0
    weight_decay_scale: float = 1.0

"""Deep Crossing (Shan et al., KDD 2016): Feature → Embedding → Stacking → Residual Units → Scoring."""

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from ctr.models.layers import ResidualUnit


class DeepCrossing(nn.Module):
    """One pooled embedding per sparse feature, stacked with the dense features, crossed
    by a stack of residual units and scored by a linear layer into one logit.

    Args:
        embedding_bag_collection: the sparse side; sharded by DistributedModelParallel.
        num_dense_features: width of the dense input.
        num_residual_units: depth of the residual stack.
        residual_hidden_dim: inner width of each residual unit.

    Shapes: dense [B, num_dense_features], sparse KJT with batch size B → logits [B].
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        num_dense_features: int,
        num_residual_units: int = 3,
        residual_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.embeddings = embedding_bag_collection
        tables = embedding_bag_collection.embedding_bag_configs()
        self._feature_order = [feature for table in tables for feature in table.feature_names]
        stack_dim = num_dense_features + sum(table.embedding_dim * len(table.feature_names) for table in tables)
        self.residual_units = nn.Sequential(
            *(ResidualUnit(stack_dim, residual_hidden_dim) for _ in range(num_residual_units))
        )
        self.scoring = nn.Linear(stack_dim, 1)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        # A sharded collection returns features grouped by shard; fix the stacking order.
        pooled = KeyedTensor.regroup([self.embeddings(sparse_features)], [self._feature_order])[0]
        stacked = torch.cat([dense_features, pooled], dim=1)
        return self.scoring(self.residual_units(stacked)).squeeze(-1)

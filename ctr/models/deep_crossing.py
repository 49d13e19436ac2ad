"""Deep Crossing (Shan et al., KDD 2016): Feature → Embedding → Stacking → Residual Units → Scoring."""

from typing import Dict

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.embeddings import FeatureEmbeddings
from ctr.models.layers import ResidualUnit, check_dropout
from ctr.models.table_groups import TableGroup


class DeepCrossing(nn.Module):
    """One pooled embedding per sparse feature, stacked with the dense features, crossed
    by a stack of residual units and scored by a linear layer into one logit.

    Args:
        embeddings: the sparse side (its collection is sharded by DistributedModelParallel);
            one vector per feature, of mixed dimensions if configured so.
        num_dense_features: width of the dense input.
        num_residual_units: depth of the residual stack.
        residual_hidden_dim: inner width of each residual unit.
        dropout: probability of dropping each residual unit's outputs while training (0: none).
        batch_norm: batch normalisation in each residual unit, before its activation.

    Shapes: dense [B, num_dense_features], sparse KJT with batch size B → logits [B].
    """

    def __init__(
        self,
        embeddings: FeatureEmbeddings,
        num_dense_features: int,
        num_residual_units: int = 3,
        residual_hidden_dim: int = 256,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        check_dropout(dropout)
        self.embeddings = embeddings
        stack_dim = num_dense_features + embeddings.output_dim
        self.residual_units = nn.Sequential(
            *(ResidualUnit(stack_dim, residual_hidden_dim, dropout, batch_norm) for _ in range(num_residual_units))
        )
        self.scoring = nn.Linear(stack_dim, 1)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        stacked = torch.cat([dense_features, self.embeddings(sparse_features)], dim=1)
        return self.scoring(self.residual_units(stacked)).squeeze(-1)

    def table_groups(self) -> Dict[str, TableGroup]:
        """All tables train with the sparse optimizer."""
        return {"sparse": TableGroup([self.embeddings.collection])}

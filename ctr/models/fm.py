"""Factorization Machine (Rendle, ICDM 2010): a linear model plus every pair of features'
interaction, the inner product of their embeddings, computed in O(k·n).

logit = w0 + Σ_d w_d·x_d (dense) + Σ_i w_i (first-order weight of each sparse id)
        + Σ_{i<j} <v_i, v_j>           (v_i: feature i's pooled embedding, k wide)

The pairwise sum is over features (fields): a bag's vector is its pooled ids, and the
ids inside one bag do not interact with each other, as in the field-wise FM of DeepFM
and FuxiCTR. The embeddings are the same sharded tables Deep Crossing reads (same names),
so a trained FM's tables can start another model's (FNN: `embedding.init`).
"""

from typing import Dict

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.embeddings import FeatureEmbeddings
from ctr.models.table_groups import TableGroup
from ctr.models.wide_deep import WideLinear, wide_tables


def pairwise_interactions(vectors: torch.Tensor) -> torch.Tensor:
    """Σ_{i<j} <v_i, v_j> per row, as ½·((Σ_i v_i)² − Σ_i v_i²) summed over the k columns.

    Shapes: [B, n, k] → [B].

    >>> pairwise_interactions(torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]))
    tensor([44.])
    """
    return 0.5 * (vectors.sum(dim=1).square() - vectors.square().sum(dim=1)).sum(dim=1)


class FactorizationMachine(nn.Module):
    """A bias and a weight per dense feature (one linear layer), a first-order weight per
    sparse id (`WideLinear`: zero-initialised, its own optimizer `optimizer.wide`), and the
    pairwise interactions of the sparse features' embeddings.

    Args:
        embeddings: one vector per sparse feature, all of one width k (`embedding.dim`).
        num_dense_features: width of the dense input (a linear term; dense features have no vector).

    Shapes: dense [B, num_dense_features], sparse KJT with batch size B → logits [B].
    """

    def __init__(self, embeddings: FeatureEmbeddings, num_dense_features: int) -> None:
        super().__init__()
        dims = set(embeddings.feature_dims.values())
        if len(dims) != 1:
            raise ValueError(
                f"model=fm: the pairwise term needs one embedding width for every feature, got "
                f"{embeddings.feature_dims}; set embedding.dim, without embedding.dim_per_feature or embedding.dim_rule"
            )
        self.embeddings = embeddings
        self._shape = (len(embeddings.feature_names), dims.pop())
        keys = [key for feature in embeddings.feature_names for key in embeddings.parts[feature]]
        self.linear = WideLinear(wide_tables(embeddings.collection.embedding_bag_configs(), keys, []),
                                 embeddings.collection.device)
        self.dense = nn.Linear(num_dense_features, 1)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        vectors = self.embeddings(sparse_features).unflatten(1, self._shape)
        return self.dense(dense_features).squeeze(-1) + self.linear(sparse_features) + pairwise_interactions(vectors)

    def table_groups(self) -> Dict[str, TableGroup]:
        """The embeddings train with the sparse optimizer, the first-order weights with `optimizer.wide`."""
        return {"sparse": TableGroup([self.embeddings.collection]), "wide": self.linear.table_group()}

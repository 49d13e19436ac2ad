"""Item2Vec (Barkan & Koenigstein 2016): skip-gram with negative sampling over item sequences."""

from typing import Dict

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.embeddings import FeatureEmbeddings
from ctr.models.table_groups import TableGroup


class Item2Vec(nn.Module):
    """The logit of a (item, context) row is the inner product of the item's input vector
    and the context's output vector, each from its own table; with the rows of
    `ctr.data.skipgram.SkipGramPairs` (label 1 for observed pairs, 0 for sampled ones) the
    log-loss is skip-gram's negative-sampling loss. There is no dense part: everything
    trained is a sharded table under the fused optimizer.

    Args:
        embeddings: two features, the item's and the context's, of one dimension.
        num_dense_features: must be 0 (the pairs carry none).

    Shapes: sparse KJT with batch size B → logits [B].
    """

    def __init__(self, embeddings: FeatureEmbeddings, num_dense_features: int) -> None:
        super().__init__()
        names, dims = embeddings.feature_names, embeddings.feature_dims
        if len(names) != 2 or dims[names[0]] != dims[names[1]] or num_dense_features:
            raise ValueError(f"model=item2vec scores (item, context) pairs: expected two sparse features of one "
                             f"dimension and no dense ones (data=<name>_item2vec); got {dims} and "
                             f"{num_dense_features} dense features")
        self.embeddings = embeddings
        self.dim = dims[names[0]]

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        vectors = self.embeddings(sparse_features)
        return (vectors[:, :self.dim] * vectors[:, self.dim:]).sum(dim=1)

    def table_groups(self) -> Dict[str, TableGroup]:
        """Both tables train with the sparse optimizer."""
        return {"sparse": TableGroup([self.embeddings.collection])}

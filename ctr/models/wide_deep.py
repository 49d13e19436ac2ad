"""Wide & Deep (Cheng et al., DLRS 2016): a linear model over sparse and crossed features,
trained jointly with an embedding + MLP tower; the logit is the sum of the two."""

from dataclasses import replace
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.crossing import Cross, parse_crosses
from ctr.features.embeddings import FeatureEmbeddings
from ctr.models.layers import check_dropout, mlp
from ctr.models.table_groups import TableGroup


class WideLinear(nn.Module):
    """A linear model over sparse ids: the sum of one scalar weight per id, over every KJT key
    its tables read. Shapes: KJT with batch size B → [B].

    Representation: FBGEMM's kernels need dimensions in multiples of 4, so each weight is a
    row of `COLUMNS` = 4 entries, zero at the start, and the weight is their sum. Every entry
    of a row gets the same gradient g (that of the weight), so under SGD, Adagrad and
    row-wise Adagrad the entries stay equal and the weight moves by 4× one entry's step:
    exactly the 1-wide linear model trained with 4× the learning rate. The tables' group
    (`table_group`) therefore scales their learning rate by 1 / COLUMNS, which makes the
    wide part exactly the configured optimizer on scalar weights (tests/models/test_wide_deep.py).
    An L2 penalty wd·W²/2 on a weight W = 4·w (each entry w) has the gradient wd·W = 4·wd·w per
    entry, so the group scales its weight decay by COLUMNS.
    Bags are sum-pooled: a bag contributes the sum of its ids' weights, as in a linear
    model over a multi-hot vector.

    The tables are an `EmbeddingBagCollection` of their own, so they are sharded like the
    deep ones and can have their own fused optimizer (`optimizer.wide`).
    """

    COLUMNS = 4

    def __init__(self, tables: Sequence[EmbeddingBagConfig], device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.collection = EmbeddingBagCollection(tables=list(tables), device=device)

    def table_group(self) -> TableGroup:
        """The wide tables train with `optimizer.wide` at lr / COLUMNS and weight decay × COLUMNS:
        scalar weights at lr and weight decay."""
        return TableGroup([self.collection], settings="wide", lr_scale=1 / self.COLUMNS,
                          weight_decay_scale=self.COLUMNS)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        # A plain sum over every key's columns: the order a sharded collection returns keys in is irrelevant.
        return self.collection(features).values().sum(dim=1)


def wide_tables(
    deep_tables: Sequence[EmbeddingBagConfig], keys: Sequence[str], crosses: Sequence[Cross]
) -> List[EmbeddingBagConfig]:
    """The wide part's tables: each deep table cut down to the wide `keys` it reads (a shared
    table stays shared), then one per cross; `WideLinear.COLUMNS` wide, zero, sum-pooled.

    >>> deep = [EmbeddingBagConfig(name="t_movie", feature_names=["movieId", "rated"], num_embeddings=9, embedding_dim=16)]
    >>> [(t.name, t.feature_names, t.num_embeddings) for t in wide_tables(deep, ["movieId"], [Cross(("movieId", "rated"), 5)])]
    [('wide_t_movie', ['movieId'], 9), ('wide_t_movieId_x_rated', ['movieId_x_rated'], 5)]
    """
    wide = dict(embedding_dim=WideLinear.COLUMNS, pooling=PoolingType.SUM, weight_init_min=0.0, weight_init_max=0.0, init_fn=None)
    tables = [
        replace(table, name=f"wide_{table.name}", feature_names=[k for k in table.feature_names if k in keys], **wide)
        for table in deep_tables
        if any(k in keys for k in table.feature_names)
    ]
    data_type = deep_tables[0].data_type
    tables += [
        EmbeddingBagConfig(name=f"wide_t_{c.key}", feature_names=[c.key], num_embeddings=c.num_embeddings, data_type=data_type, **wide)
        for c in crosses
    ]
    return tables


class WideAndDeep(nn.Module):
    """logit = wide(sparse ids, crosses) + deep(dense ‖ pooled embeddings), the deep tower an MLP.

    Args:
        embeddings: the deep part's tables (one vector per sparse feature, as for Deep Crossing).
        num_dense_features: width of the dense input, stacked with the embeddings.
        hidden_dims: the MLP's layer widths (ReLU), followed by a linear layer to the deep logit
            (its bias is the model's bias).
        dropout: probability of dropping each MLP layer's outputs while training (0: none).
        batch_norm: batch normalisation in each MLP layer, before its activation.
        wide: `features` (sparse features in the linear part; null: all) and `crosses`
            (`[{features: [A, B], num_embeddings: N}]`, see `ctr.features.crossing`).

    Shapes: dense [B, num_dense_features], sparse KJT with batch size B (plus one key per
    cross, appended by `CrossedHashing`) → logits [B].
    """

    def __init__(
        self,
        embeddings: FeatureEmbeddings,
        num_dense_features: int,
        hidden_dims: Sequence[int] = (256, 128),
        wide: Optional[Mapping] = None,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        wide = wide or {}
        if not hidden_dims or any(d <= 0 for d in hidden_dims):
            raise ValueError(f"model.hidden_dims={list(hidden_dims)}: expected one or more positive widths")
        check_dropout(dropout)
        features = wide.get("features")
        features = list(embeddings.feature_names if features is None else features)
        unknown = [f for f in features if f not in embeddings.parts]
        if unknown:
            raise ValueError(f"model.wide.features names {unknown}, which are not sparse features {embeddings.feature_names}")
        crosses = parse_crosses(wide.get("crosses") or [], embeddings.feature_names)
        if not features and not crosses:
            raise ValueError("model.wide: the wide part needs features or crosses")
        keys = [key for f in features for key in embeddings.parts[f]]
        self.embeddings = embeddings
        self.deep = nn.Sequential(
            mlp(num_dense_features + embeddings.output_dim, hidden_dims, dropout, batch_norm),
            nn.Linear(hidden_dims[-1], 1),
        )
        self.wide = WideLinear(wide_tables(embeddings.collection.embedding_bag_configs(), keys, crosses),
                               embeddings.collection.device)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        stacked = torch.cat([dense_features, self.embeddings(sparse_features)], dim=1)
        return self.deep(stacked).squeeze(-1) + self.wide(sparse_features)

    def table_groups(self) -> Dict[str, TableGroup]:
        """The deep tables train with the sparse optimizer, the wide ones with their own."""
        return {"sparse": TableGroup([self.embeddings.collection]), "wide": self.wide.table_group()}

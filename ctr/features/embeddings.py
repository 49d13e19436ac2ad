"""One pooled vector per feature, whatever tables the hashing split the feature into."""

from typing import Dict, List, Mapping, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from ctr.config import QRCombine

COMBINE_OPS = {QRCombine.sum: torch.add, QRCombine.product: torch.mul}


class FeatureEmbeddings(nn.Module):
    """Looks up a KJT in `collection` and returns each feature's vector, in feature order.

    `parts[feature]` lists the KJT keys (one per table) the feature's ids were hashed to:
    one key for most hashings, two for `qr`, combined element-wise by `combine`. Outputs
    are addressed by key, never by position: a sharded collection groups them by shard.

    Shapes: KJT with batch size B → [B, output_dim], `feature_dims` wide per feature.

    >>> from torchrec.modules.embedding_configs import EmbeddingBagConfig
    >>> tables = [EmbeddingBagConfig(name=f"t_{k}", feature_names=[k], num_embeddings=4, embedding_dim=8)
    ...           for k in ("a@q", "a@r")]
    >>> fe = FeatureEmbeddings(EmbeddingBagCollection(tables=tables), {"a": ["a@q", "a@r"]}, "product")
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a@q", "a@r"], torch.tensor([1, 2]), torch.tensor([1, 1]))
    >>> fe(kjt).shape, fe.output_dim
    (torch.Size([1, 8]), 8)
    """

    def __init__(
        self, collection: EmbeddingBagCollection, parts: Mapping[str, Sequence[str]], combine: QRCombine = QRCombine.sum
    ) -> None:
        super().__init__()
        counts = {len(keys) for keys in parts.values()}
        if len(counts) != 1:
            raise ValueError(f"every feature needs the same number of parts; got {dict(parts)}")
        key_dims = {key: t.embedding_dim for t in collection.embedding_bag_configs() for key in t.feature_names}
        self.collection = collection
        self.parts: Dict[str, List[str]] = {feature: list(keys) for feature, keys in parts.items()}
        self.feature_names: List[str] = list(parts)
        self.feature_dims: Dict[str, int] = {}
        for feature, keys in parts.items():
            dims = {key_dims[key] for key in keys}
            if len(dims) != 1:
                raise ValueError(f"feature {feature!r}: its parts {list(keys)} must have one dimension, got {dims}")
            self.feature_dims[feature] = dims.pop()
        self.output_dim = sum(self.feature_dims.values())
        self._groups = [[parts[feature][i] for feature in self.feature_names] for i in range(counts.pop())]
        self._combine = COMBINE_OPS[combine]

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        groups = KeyedTensor.regroup([self.collection(features)], self._groups)
        # Indexed, not iterated: TorchRec's train pipeline traces this with torch.fx.
        combined = groups[0]
        for i in range(1, len(self._groups)):
            combined = self._combine(combined, groups[i])
        return combined

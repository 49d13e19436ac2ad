"""Item2Vec's logit: the item's input vector · the context's output vector."""

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.embeddings import FeatureEmbeddings
from ctr.models.item2vec import Item2Vec


def _embeddings(dims=(8, 8)) -> FeatureEmbeddings:
    tables = [EmbeddingBagConfig(name=f"t_{k}", feature_names=[k], num_embeddings=10, embedding_dim=d)
              for k, d in zip(("item", "item_context"), dims)]
    return FeatureEmbeddings(EmbeddingBagCollection(tables=tables), {"item": ["item"], "item_context": ["item_context"]})


def test_logit_is_the_inner_product_of_the_item_and_context_rows():
    model = Item2Vec(_embeddings(), num_dense_features=0)
    items, contexts = torch.tensor([1, 4, 7]), torch.tensor([2, 2, 9])
    kjt = KeyedJaggedTensor.from_lengths_sync(["item", "item_context"], torch.cat([items, contexts]),
                                              torch.ones(6, dtype=torch.int32))
    weights = {name: bag.weight for name, bag in model.embeddings.collection.embedding_bags.items()}
    expected = (weights["t_item"][items] * weights["t_item_context"][contexts]).sum(1)
    torch.testing.assert_close(model(torch.zeros(3, 0), kjt), expected)


def test_pairs_of_unequal_dims_or_dense_features_are_refused():
    with pytest.raises(ValueError, match="model=item2vec"):
        Item2Vec(_embeddings((8, 4)), num_dense_features=0)
    with pytest.raises(ValueError, match="no dense ones"):
        Item2Vec(_embeddings(), num_dense_features=2)

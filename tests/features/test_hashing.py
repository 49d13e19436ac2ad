import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.hashing import ModuloHashing, feature_table_sizes
from ctr.features.tables import embedding_bag_configs


def test_modulo_applies_each_features_own_table_size():
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b"], values=torch.tensor([25, 7, 2**62 + 3, 11]), lengths=torch.tensor([1, 1, 1, 1])
    )
    hashed = ModuloHashing({"a": 10, "b": 4}).hash_features(kjt)
    assert hashed["a"].values().tolist() == [5, 7]
    assert hashed["b"].values().tolist() == [(2**62 + 3) % 4, 11 % 4]
    assert hashed.lengths().tolist() == [1, 1, 1, 1]


def test_table_sizes_take_per_feature_overrides_and_reject_unknown_features():
    assert feature_table_sizes(["a", "b"], 100, {"b": 7}) == {"a": 100, "b": 7}
    with pytest.raises(KeyError, match="num_embeddings_per_feature names \\['c'\\]"):
        feature_table_sizes(["a", "b"], 100, {"c": 7})


def test_tables_get_their_dims_and_reject_dims_fbgemm_cannot_run():
    configs = embedding_bag_configs(["a", "b"], {"a": 10, "b": 20}, 8, {"b": 12})
    assert [(c.name, c.num_embeddings, c.embedding_dim, c.feature_names) for c in configs] == [
        ("t_a", 10, 8, ["a"]),
        ("t_b", 20, 12, ["b"]),
    ]
    with pytest.raises(ValueError, match="embedding.dim=6"):
        embedding_bag_configs(["a"], {"a": 10}, 6, {})
    with pytest.raises(ValueError, match="embedding.dim_per_feature.a=10"):
        embedding_bag_configs(["a"], {"a": 10}, 8, {"a": 10})

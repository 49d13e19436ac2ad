import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec.modules.embedding_configs import DataType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ctr.features.hashing import ModuloHashing, build_hashing, feature_table_sizes
from ctr.features.qr import QRHashing
from ctr.features.tables import embedding_bag_configs, feature_dims


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


def test_tables_get_their_dims_and_precision_and_reject_dims_fbgemm_cannot_run():
    dims = feature_dims({"a": 10, "b": 20}, 8, {"b": 12})
    configs = embedding_bag_configs({"a": {"a": 10}, "b": {"b@q": 5, "b@r": 4}}, dims, "fp16")
    assert [(c.name, c.num_embeddings, c.embedding_dim, c.feature_names) for c in configs] == [
        ("t_a", 10, 8, ["a"]),
        ("t_b@q", 5, 12, ["b@q"]),
        ("t_b@r", 4, 12, ["b@r"]),
    ]
    assert {c.data_type for c in configs} == {DataType.FP16}
    with pytest.raises(ValueError, match="embedding.dim=6"):
        feature_dims({"a": 10}, 6, {})
    with pytest.raises(ValueError, match="embedding.dim_per_feature.a=10"):
        feature_dims({"a": 10}, 8, {"a": 10})


def test_dim_rule_grows_with_the_fourth_root_of_cardinality_within_its_clip():
    dims = feature_dims({"small": 16, "mid": 10_000, "huge": 10**12, "fixed": 10**12}, 16, {"fixed": 8},
                        rule_k=2.0, rule_min=8, rule_max=64)
    assert dims == {"small": 8, "mid": 20, "huge": 64, "fixed": 8}


def test_fp16_storage_halves_the_table_bytes():
    def weight_bytes(precision):
        configs = embedding_bag_configs({"a": {"a": 1000}}, {"a": 16}, precision)
        ebc = EmbeddingBagCollection(tables=configs)
        return sum(p.numel() * p.element_size() for p in ebc.parameters())

    assert weight_bytes("fp16") * 2 == weight_bytes("fp32") == 1000 * 16 * 4


def test_a_hashing_given_as_a_plain_string_fails_naming_the_config_group():
    with pytest.raises(ValueError, match="embedding/hashing=qr"):
        build_hashing({"hashing": "qr"}, source=None)


def test_rows_of_places_raw_ids_as_the_data_path_does_and_refuses_split_features():
    assert ModuloHashing({"a": 10}).rows_of("a", torch.tensor([123, 7])).tolist() == [3, 7]
    with pytest.raises(ValueError, match=r"feature 'a' is hashed into the tables \['a@q', 'a@r'\]"):
        QRHashing({"a": 10}, remainder_rows=4, combine="sum").rows_of("a", torch.tensor([1]))

"""Wide & Deep: the wide part is a linear model over ids and crosses; logit = wide + deep."""

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.embeddings import FeatureEmbeddings
from ctr.models.wide_deep import WideAndDeep

# Features a (single id) and b (a bag) share the deep table t_ab; c has its own.
DEEP = [
    EmbeddingBagConfig(name="t_ab", feature_names=["a", "b"], num_embeddings=6, embedding_dim=8),
    EmbeddingBagConfig(name="t_c", feature_names=["c"], num_embeddings=3, embedding_dim=4),
]
CROSS = {"features": ["a", "c"], "num_embeddings": 5}


def _embeddings() -> FeatureEmbeddings:
    return FeatureEmbeddings(EmbeddingBagCollection(tables=DEEP), {f: [f] for f in "abc"})


def _kjt() -> KeyedJaggedTensor:
    # Two rows: a = [1], [4]; b = [2, 3], []; c = [0], [2]; cross a_x_c = [3], [1] (rows, as hashed).
    return KeyedJaggedTensor.from_lengths_sync(
        ["a", "b", "c", "a_x_c"], torch.tensor([1, 4, 2, 3, 0, 2, 3, 1]), torch.tensor([1, 1, 2, 0, 1, 1, 1, 1]),
    )


def _model(**wide) -> WideAndDeep:
    return WideAndDeep(_embeddings(), num_dense_features=2, hidden_dims=[6, 3], wide={"crosses": [CROSS], **wide})


def test_wide_tables_start_at_zero_are_four_wide_and_mirror_the_deep_sharing():
    wide = _model().wide.collection
    assert [(t.name, t.feature_names, t.num_embeddings, t.embedding_dim) for t in wide.embedding_bag_configs()] == [
        ("wide_t_ab", ["a", "b"], 6, 4), ("wide_t_c", ["c"], 3, 4), ("wide_t_a_x_c", ["a_x_c"], 5, 4),
    ]
    assert all(torch.count_nonzero(p) == 0 for p in wide.parameters())


def test_the_wide_part_alone_is_the_hand_computed_linear_model():
    model = _model()
    w_ab, w_c, w_cross = torch.tensor([0.0, 0.5, -1.0, 2.0, 0.25, 0.0]), torch.tensor([1.5, 0.0, -0.5]), torch.arange(5.0)
    for name, w in (("wide_t_ab", w_ab), ("wide_t_c", w_c), ("wide_t_a_x_c", w_cross)):
        # Each weight spread unevenly over its 4 columns: only their sum may count.
        spread = w[:, None] * torch.tensor([0.1, 0.2, 0.3, 0.4]) + torch.tensor([1.0, -1.0, 2.0, -2.0])
        model.wide.collection.embedding_bags[name].weight.data.copy_(spread)
    # Row 0: a=1, b={2, 3}, c=0, cross 3; row 1: a=4, b={}, c=2, cross 1.
    expected = torch.stack([w_ab[1] + w_ab[2] + w_ab[3] + w_c[0] + w_cross[3], w_ab[4] + w_c[2] + w_cross[1]])
    torch.testing.assert_close(model.wide(_kjt()), expected)


def test_the_logit_is_the_deep_logit_plus_the_wide_logit():
    torch.manual_seed(0)
    model = _model(features=["b"])
    assert [t.feature_names for t in model.wide.collection.embedding_bag_configs()] == [["b"], ["a_x_c"]]
    dense, sparse = torch.randn(2, 2), _kjt()
    deep_only = model(dense, sparse)
    torch.nn.init.uniform_(model.wide.collection.embedding_bags["wide_t_ab"].weight)
    torch.testing.assert_close(model(dense, sparse), deep_only + model.wide(sparse))
    assert model.deep[0][0].in_features == 2 + 8 + 8 + 4
    assert model(dense, sparse).shape == (2,)


@pytest.mark.parametrize("kwargs,message", [
    ({"wide": {"features": ["nope"]}}, "model.wide.features names \\['nope'\\]"),
    ({"wide": {"features": []}}, "needs features or crosses"),
    ({"wide": {"crosses": [{"features": ["a", "zz"], "num_embeddings": 3}]}}, "model.wide.crosses\\[0\\].features"),
    ({"hidden_dims": []}, "model.hidden_dims"),
])
def test_a_bad_config_names_its_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WideAndDeep(_embeddings(), num_dense_features=2, **kwargs)


def test_the_deep_mlp_takes_batch_norm_before_and_dropout_after_each_relu():
    model = WideAndDeep(_embeddings(), num_dense_features=2, hidden_dims=[6, 3], wide={"crosses": [CROSS]},
                        dropout=0.25, batch_norm=True)
    layers = [type(m).__name__ for m in model.deep[0]]
    assert layers == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2
    assert [m.p for m in model.deep[0] if isinstance(m, torch.nn.Dropout)] == [0.25, 0.25]
    assert [type(m).__name__ for m in _model().deep[0]] == ["Linear", "ReLU"] * 2

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from ctr.features.embeddings import FeatureEmbeddings
from ctr.models.deep_crossing import DeepCrossing
from ctr.models.layers import ResidualUnit


def _ebc(dims=(4, 8)) -> FeatureEmbeddings:
    collection = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name=f"t{i}", feature_names=[f"f{i}"], num_embeddings=10, embedding_dim=d)
            for i, d in enumerate(dims)
        ]
    )
    return FeatureEmbeddings(collection, {f"f{i}": [f"f{i}"] for i in range(len(dims))})


def _kjt(batch_size: int) -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1"],
        values=torch.arange(2 * batch_size) % 10,
        lengths=torch.ones(2 * batch_size, dtype=torch.int32),
    )


def test_residual_unit_is_relu_of_input_plus_two_layer_transform():
    torch.manual_seed(0)
    unit = ResidualUnit(dim=6, hidden_dim=5)
    x = torch.randn(3, 6)
    expected = torch.relu(x + unit.outer(torch.relu(unit.inner(x))))
    torch.testing.assert_close(unit(x), expected)
    assert unit.inner.out_features == 5 and unit.outer.out_features == 6


def test_residual_unit_passes_input_through_when_transform_is_zero():
    unit = ResidualUnit(dim=4, hidden_dim=3)
    torch.nn.init.zeros_(unit.outer.weight)
    torch.nn.init.zeros_(unit.outer.bias)
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    torch.testing.assert_close(unit(x), torch.relu(x))


def test_deep_crossing_shapes_and_sizes_from_config():
    model = DeepCrossing(_ebc(), num_dense_features=3, num_residual_units=2, residual_hidden_dim=7)
    logits = model(torch.randn(5, 3), _kjt(5))
    assert logits.shape == (5,)
    assert len(model.residual_units) == 2
    assert model.residual_units[0].inner.in_features == 3 + 4 + 8
    assert model.residual_units[0].inner.out_features == 7
    assert model.scoring.out_features == 1


def test_deep_crossing_stacks_features_in_config_order_whatever_the_embedding_output_order():
    """A sharded collection returns features grouped by shard; the stack must not change."""
    torch.manual_seed(0)
    model = DeepCrossing(_ebc(), num_dense_features=2, num_residual_units=1, residual_hidden_dim=4)
    dense, sparse = torch.randn(3, 2), _kjt(3)
    expected = model(dense, sparse)
    original = model.embeddings.collection.forward

    def shard_ordered(features):
        kt = original(features)
        return KeyedTensor.from_tensor_list(["f1", "f0"], [kt["f1"], kt["f0"]])

    model.embeddings.collection.forward = shard_ordered
    torch.testing.assert_close(model(dense, sparse), expected)


def test_residual_unit_batch_norm_normalises_the_sum_before_relu_and_dropout_drops_its_outputs():
    torch.manual_seed(0)
    unit = ResidualUnit(dim=6, hidden_dim=5, dropout=0.5, batch_norm=True)
    x = torch.randn(64, 6)
    unit.eval()  # dropout off, batch norm with its running statistics (mean 0, variance 1 at start)
    total = x + unit.outer(torch.relu(unit.inner(x)))
    torch.testing.assert_close(unit(x), torch.relu(total / torch.sqrt(torch.tensor(1 + 1e-5))))
    unit.train()
    out = unit(x)
    normalised = torch.relu((total - total.mean(0)) / torch.sqrt(total.var(0, unbiased=False) + 1e-5))
    kept = out != 0
    torch.testing.assert_close(out[kept], 2 * normalised[kept])  # inverted dropout scales the kept by 1/(1-p)
    assert 0.3 < 1 - kept.float().sum() / (normalised != 0).float().sum() < 0.7


def test_deep_crossing_puts_dropout_and_batch_norm_in_every_residual_unit():
    model = DeepCrossing(_ebc(), num_dense_features=3, num_residual_units=2, residual_hidden_dim=7,
                         dropout=0.2, batch_norm=True)
    for unit in model.residual_units:
        assert isinstance(unit.norm, torch.nn.BatchNorm1d) and unit.norm.num_features == 3 + 4 + 8
        assert isinstance(unit.dropout, torch.nn.Dropout) and unit.dropout.p == 0.2
    plain = DeepCrossing(_ebc(), num_dense_features=3, num_residual_units=1, residual_hidden_dim=7)
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.Dropout)) for m in plain.modules())


def test_dropout_must_be_a_probability_below_one():
    with pytest.raises(ValueError, match=r"model.dropout=1.0: expected a probability in \[0, 1\)"):
        DeepCrossing(_ebc(), num_dense_features=3, dropout=1.0)

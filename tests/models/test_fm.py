"""Factorization Machine: the O(k·n) pairwise term equals the O(n²) sum of pair products, and
the logit is bias + dense linear + first-order weights + pairwise."""

import itertools

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.embeddings import FeatureEmbeddings
from ctr.models.fm import FactorizationMachine, pairwise_interactions

# Features a (single id) and b (a bag) share table t_ab; c has its own; all 8 wide.
TABLES = [
    EmbeddingBagConfig(name="t_ab", feature_names=["a", "b"], num_embeddings=6, embedding_dim=8),
    EmbeddingBagConfig(name="t_c", feature_names=["c"], num_embeddings=3, embedding_dim=8),
]


def _model() -> FactorizationMachine:
    return FactorizationMachine(FeatureEmbeddings(EmbeddingBagCollection(tables=TABLES), {f: [f] for f in "abc"}), 2)


def _kjt() -> KeyedJaggedTensor:
    # Row 0: a=[1], b=[2, 3], c=[0]; row 1: a=[4], b=[], c=[2].
    return KeyedJaggedTensor.from_lengths_sync(
        ["a", "b", "c"], torch.tensor([1, 4, 2, 3, 0, 2]), torch.tensor([1, 1, 2, 0, 1, 1]),
    )


def _brute_force(vectors: torch.Tensor) -> torch.Tensor:
    n = vectors.shape[1]
    return sum((vectors[:, i] * vectors[:, j]).sum(dim=1) for i, j in itertools.combinations(range(n), 2))


@pytest.mark.parametrize("n,k", [(2, 4), (7, 16), (26, 8)])
def test_the_pairwise_term_equals_the_brute_force_sum_over_pairs(n, k):
    vectors = torch.randn(5, n, k, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    torch.testing.assert_close(pairwise_interactions(vectors), _brute_force(vectors))


def test_the_logit_is_bias_dense_first_order_and_pairwise_terms():
    torch.manual_seed(0)
    model = _model()
    w_ab, w_c = torch.tensor([0.0, 0.5, -1.0, 2.0, 0.25, 0.0]), torch.tensor([1.5, 0.0, -0.5])
    for name, w in (("wide_t_ab", w_ab), ("wide_t_c", w_c)):
        model.linear.collection.embedding_bags[name].weight.data.copy_(w[:, None].expand(-1, 4) / 4)
    dense = torch.randn(2, 2)
    v_ab = model.embeddings.collection.embedding_bags["t_ab"].weight.detach()
    v_c = model.embeddings.collection.embedding_bags["t_c"].weight.detach()
    fields = torch.stack([
        torch.stack([v_ab[1], v_ab[2] + v_ab[3], v_c[0]]),  # a bag's vector is its ids' sum
        torch.stack([v_ab[4], torch.zeros(8), v_c[2]]),
    ])
    first_order = torch.stack([w_ab[1] + w_ab[2] + w_ab[3] + w_c[0], w_ab[4] + w_c[2]])
    expected = model.dense(dense).squeeze(-1) + first_order + _brute_force(fields)
    torch.testing.assert_close(model(dense, _kjt()), expected)


def test_the_tables_and_their_optimizer_groups():
    model = _model()
    assert [t.name for t in model.linear.collection.embedding_bag_configs()] == ["wide_t_ab", "wide_t_c"]
    groups = model.table_groups()
    assert groups["sparse"].collections == [model.embeddings.collection]
    assert groups["wide"].settings == "wide" and groups["wide"].lr_scale == 0.25


def test_features_of_different_widths_are_refused_naming_the_setting():
    tables = [EmbeddingBagConfig(name=f"t_{f}", feature_names=[f], num_embeddings=3, embedding_dim=d) for f, d in (("a", 4), ("b", 8))]
    with pytest.raises(ValueError, match="embedding.dim_per_feature"):
        FactorizationMachine(FeatureEmbeddings(EmbeddingBagCollection(tables=tables), {"a": ["a"], "b": ["b"]}), 1)

import math

import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.embeddings import FeatureEmbeddings
from ctr.features.qr import QRHashing
from ctr.features.tables import embedding_bag_configs


def _one_id_per_row(key: str, ids: torch.Tensor) -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync([key], ids, torch.ones(len(ids), dtype=torch.int32))


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_qr_gives_every_id_below_n_its_own_vector_from_about_two_sqrt_n_rows(combine):
    torch.manual_seed(0)
    n = 50
    hashing = QRHashing({"a": n}, remainder_rows=None, combine=combine)
    rows = hashing.table_rows()["a"]
    assert rows == {"a@q": 7, "a@r": 8} and sum(rows.values()) <= 2 * math.isqrt(n) + 2
    embeddings = FeatureEmbeddings(
        EmbeddingBagCollection(tables=embedding_bag_configs(hashing.table_rows(), {"a": 8})),
        {"a": list(rows)}, hashing.combine,
    )
    vectors = embeddings(hashing.hash_features(_one_id_per_row("a", torch.arange(n) + 7 * n)))
    assert vectors.shape == (n, 8)
    assert len(torch.unique(vectors, dim=0)) == n
    # ids are reduced mod N first, so id and id + N share a vector
    again = embeddings(hashing.hash_features(_one_id_per_row("a", torch.arange(n))))
    torch.testing.assert_close(again, vectors)


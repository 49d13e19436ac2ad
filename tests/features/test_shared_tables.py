"""Features sharing one table (a shared vocabulary from the data): one table, one vector per feature."""

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ctr.data.rows import Rows, rows_to_batch
from ctr.features.embeddings import FeatureEmbeddings
from ctr.features.hashing import ModuloHashing, feature_table_sizes
from ctr.features.tables import embedding_bag_configs

SHARED = {"genre": ["movieGenres", "userGenres"]}
NAMES = ["user", "movieGenres", "userGenres"]


def test_shared_features_look_up_the_same_rows_and_keep_one_vector_each():
    sizes = feature_table_sizes(NAMES, 50, {"genre": 11}, SHARED)
    hashing = ModuloHashing(sizes)
    tables = embedding_bag_configs(hashing.table_rows(), dict.fromkeys(NAMES, 4), "fp32", SHARED)
    embeddings = FeatureEmbeddings(EmbeddingBagCollection(tables=tables), {n: [n] for n in NAMES})
    # Row 0: both genre bags hold id 3 (+11, the same row mod 11); row 1: empty user bag.
    rows = Rows(np.zeros((2, 1), np.float32), np.array([[1], [2]]), np.zeros(2, np.float32),
                bags={"movieGenres": np.array([[3, -1], [5, 6]]), "userGenres": np.array([[14, -1], [-1, -1]])})
    out = embeddings(hashing(rows_to_batch(rows, NAMES)).sparse_features)
    assert out.shape == (2, 12) and embeddings.output_dim == 12
    torch.testing.assert_close(out[0, 4:8], out[0, 8:12])
    assert torch.count_nonzero(out[1, 8:12]) == 0


def test_a_per_feature_size_inside_a_shared_table_is_refused():
    with pytest.raises(KeyError, match="set under the table's name"):
        feature_table_sizes(NAMES, 50, {"userGenres": 11}, SHARED)

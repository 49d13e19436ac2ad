"""FAISS search against brute-force numpy, and launch/similar.py's keys, names and errors."""

import numpy as np
import pytest

from ctr.data.tabular import hash_ids
from ctr.features.vector_files import write_vectors
from ctr.retrieval.search import build_index, search
from similar import neighbours
from tests.hydra_config import compose

ROWS, DIM, QUERIES, K = 2000, 16, 50, 10


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return rng.standard_normal((ROWS, DIM)).astype(np.float32), rng.standard_normal((QUERIES, DIM)).astype(np.float32)


def _brute_force(data, queries, metric):
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries.astype(np.float64) @ data.T.astype(np.float64)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(scores, top, axis=1), top


@pytest.mark.parametrize("metric", ["cosine", "inner_product"])
def test_exact_search_equals_brute_force_top_k(vectors, metric):
    data, queries = vectors
    scores, rows = search(build_index(data, metric), queries, K, metric)
    expected_scores, expected_rows = _brute_force(data, queries, metric)
    assert np.array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_ivf_probing_every_list_equals_exact_search(vectors):
    data, queries = vectors
    exact = search(build_index(data), queries, K)
    ivf = search(build_index(data, index="ivf", nlist=16, nprobe=16), queries, K)
    assert np.array_equal(ivf[1], exact[1])
    np.testing.assert_allclose(ivf[0], exact[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="similar.nprobe=17"):
        build_index(data, index="ivf", nlist=16, nprobe=17)


@pytest.fixture
def movies(tmp_path):
    """Four movies keyed as vocab keeps CSV ids (hash of the value in the table's namespace), and their titles."""
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    write_vectors(tmp_path / "item_id", vectors, hash_ids("item_id", ["10", "20", "30", "40"]), "item_id", "raw",
                  "vocab", "run")
    names = tmp_path / "u.item"
    names.write_text("10|Ten (1990)|x\n20|Twenty (1991)|x\n30|Thirty (1992)|x\n40|Forty (1993)|x\n")
    return tmp_path


def _similar(movies, *overrides):
    return neighbours(compose(f"vectors={movies / 'item_id'}", f"names.path={movies / 'u.item'}", "names.delimiter=|",
                              *overrides, config_name="similar"))


def test_neighbours_of_a_key_are_named_and_leave_the_key_out(movies):
    (result,) = _similar(movies, "key=10", "k=2")
    assert result["query"] == "10" and result["name"] == "Ten (1990)"
    assert [(n["key"], n["name"]) for n in result["neighbours"]] == [("20", "Twenty (1991)"), ("30", "Thirty (1992)")]
    (movies / "keys.txt").write_text("40\n\n20\n")
    assert [r["neighbours"][0]["key"] for r in _similar(movies, f"keys_file={movies / 'keys.txt'}")] == ["30", "10"]


def test_a_key_the_export_lacks_is_named_in_the_error(movies):
    with pytest.raises(KeyError, match=r"key='99'.*not among the 4 keys"):
        _similar(movies, "key=99")
    with pytest.raises(ValueError, match="give one of key"):
        _similar(movies)

"""Nearest neighbours among exported vectors with FAISS: exact (`IndexFlatIP`) or an
inverted-file index (`IndexIVFFlat`), by cosine or inner product.

Cosine is the inner product of L2-normalised vectors, so both metrics use FAISS's
inner-product indexes; an IVF index clusters the vectors into `nlist` lists (k-means on
the vectors themselves) and searches the `nprobe` nearest lists of each query, exact when
`nprobe == nlist`.
"""

from typing import Tuple

import faiss
import numpy as np

from ctr.config import IndexKind, Metric


def prepared(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, contiguous, and L2-normalised for cosine (a zero vector stays zero)."""
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if metric == Metric.cosine:
        faiss.normalize_L2(vectors)
    return vectors


def build_index(vectors: np.ndarray, metric: str = Metric.cosine, index: str = IndexKind.flat, nlist: int = 100,
                nprobe: int = 10) -> faiss.Index:
    """An inner-product index over `vectors` (prepared for `metric`)."""
    rows, dim = vectors.shape
    data = prepared(vectors, metric)
    if index == IndexKind.flat:
        built = faiss.IndexFlatIP(dim)
    else:
        if not 1 <= nlist <= rows:
            raise ValueError(f"similar.nlist={nlist}: an IVF index needs 1 <= nlist <= the {rows} vectors")
        if not 1 <= nprobe <= nlist:
            raise ValueError(f"similar.nprobe={nprobe}: expected 1 <= nprobe <= nlist ({nlist})")
        built = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        built.train(data)
        built.nprobe = nprobe
    built.add(data)
    return built


def search(index: faiss.Index, queries: np.ndarray, k: int, metric: str = Metric.cosine) -> Tuple[np.ndarray, np.ndarray]:
    """The `k` best (scores [q, k], rows [q, k]) of each query, best first; rows -1 where
    an IVF search found fewer than k."""
    if k < 1:
        raise ValueError(f"similar.k={k}: expected at least 1")
    return index.search(prepared(queries, metric), min(k, index.ntotal))

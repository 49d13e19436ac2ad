"""Nearest neighbours of keys among exported vectors (`launch/export_embeddings.py`), with FAISS.

    python launch/similar.py vectors=<export>/item_id key=50 [k=10] [metric=cosine|inner_product] \
        [index=flat|ivf nlist=100 nprobe=10] [names.path=<file> ...] [keys_file=<file>] [output=<json>]
    python launch/similar.py --config-name similar_movielens vectors=<export>/item_id key=50   # MovieLens titles
"""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ctr.config import register_configs
from ctr.features.vector_files import read_vectors
from ctr.retrieval.keys import KeyIndex, read_values
from ctr.retrieval.search import build_index, search

register_configs()


def neighbours(cfg: DictConfig) -> list:
    """Each query's k nearest other keys: [{query, name, neighbours: [{key, name, score}]}]."""
    if (cfg.key is None) == (cfg.keys_file is None):
        raise ValueError("give one of key=<value> and keys_file=<file of values, one a line>")
    exported = read_vectors(Path(cfg.vectors))
    meta = exported.meta
    namespace = (cfg.namespace or meta.get("table")) if cfg.hashed else None
    keys = KeyIndex(exported.keys, meta["keys"], namespace, str(cfg.vectors))
    if cfg.names.path:
        names = cfg.names
        keys.add_names(Path(names.path), names.key_column, names.name_column, names.delimiter, names.encoding)
    values = [str(cfg.key)] if cfg.key is not None else read_values(Path(cfg.keys_file))
    rows = keys.rows(values)
    index = build_index(exported.vectors, cfg.metric, cfg.index, cfg.nlist, cfg.nprobe)
    # One more than k: a query finds itself first, and is left out.
    scores, found = search(index, exported.vectors[rows], cfg.k + 1, cfg.metric)
    results = []
    for value, row, row_scores, row_found in zip(values, rows, scores, found):
        hits = [(score, other) for score, other in zip(row_scores.tolist(), row_found.tolist())
                if other not in (-1, row)][:cfg.k]
        results.append({"query": value, "name": keys.describe(row)[1], "neighbours": [
            {"key": keys.describe(other)[0], "name": keys.describe(other)[1], "score": score} for score, other in hits]})
    return results


def format_results(results: list) -> str:
    lines = []
    for result in results:
        lines.append(f"{result['query']}  {result['name']}".rstrip())
        lines += [f"  {i:>3}. {n['score']:.4f}  {n['key']:>8}  {n['name']}".rstrip()
                  for i, n in enumerate(result["neighbours"], 1)]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../configs", config_name="similar")
def main(cfg: DictConfig) -> list:
    results = neighbours(cfg)
    print(format_results(results))
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

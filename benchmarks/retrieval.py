"""Exported vectors as a recall stage, the export's throughput and exact search's.

    .venv/bin/python benchmarks/retrieval.py recall --vectors item2vec=<dir> deep_crossing=<dir> [--data ...]
    .venv/bin/python benchmarks/retrieval.py export --run <run dir> --tables cat_0 ... [--ranks 2]
    .venv/bin/python benchmarks/retrieval.py search [--rows 1000000 --dim 64 --queries 4096 --k 10]

recall: for each user with positive items in both periods of `--data`'s behaviour data set
(default MovieLens 100K, movielens100k_item2vec's sequences), the nearest items (cosine,
exact) to their last positive train-period item, the user's train items left out; hit
rate@10/@50 of their first positive test-period item, for each export and for the most
popular train items. export: `launch/export_embeddings.py`'s job on N ranks, its vectors/s
(gather and write) and wall time. search: queries/s of `IndexFlatIP` over random vectors,
with FAISS on every core. Each prints one JSON line, with the machine.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctr.data.skipgram import behaviour_sequences  # noqa: E402
from ctr.features.vector_files import read_vectors  # noqa: E402
from ctr.parallel.hardware import RECORDED_CPU_FLAGS, cpu_flags  # noqa: E402
from ctr.retrieval.search import build_index, search  # noqa: E402

CUTOFFS = (10, 50)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": [f for f in cpu_flags() if f in RECORDED_CPU_FLAGS],
            "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads()}


def queries_and_targets(data_overrides: list) -> dict:
    """Per user: the last positive train item, the first positive test item, the train items."""
    from hydra import compose, initialize_config_dir

    from ctr.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        data = compose(config_name="config", overrides=data_overrides).data
    sequences = behaviour_sequences(data.behaviour, data.user_column, data.item_feature, data.time_column,
                                    data.positives_only)
    train, test = sequences["train"], sequences["test"]
    first_test = {user: test.of(u)[0] for u, user in enumerate(test.users)}
    users = [(u, user) for u, user in enumerate(train.users) if user in first_test]
    return {"query": np.array([train.of(u)[-1] for u, _ in users]),
            "target": np.array([first_test[user] for _, user in users]),
            "seen": [set(train.of(u).tolist()) for u, _ in users],
            "popularity": np.unique(train.items, return_counts=True)}


def ranked_lists(vectors_dir: Path, queries: np.ndarray, depth: int) -> list:
    """Each query's nearest keys (cosine, exact), itself left out; empty where it has no vector."""
    exported = read_vectors(vectors_dir)
    row_of = {int(k): r for r, k in enumerate(exported.keys.tolist())}
    index = build_index(exported.vectors)
    known = [q for q in queries.tolist() if q in row_of]
    _, found = search(index, exported.vectors[[row_of[q] for q in known]], depth + 1) if known else (None, [])
    lists = dict(zip(known, ([exported.keys[r] for r in row if r >= 0] for row in found)))
    return [[int(k) for k in lists.get(q, []) if k != q] for q in queries.tolist()]


def hit_rates(lists: list, targets: np.ndarray, seen: list) -> dict:
    hits = {n: 0 for n in CUTOFFS}
    for ranked, target, own in zip(lists, targets.tolist(), seen):
        ranked = [k for k in ranked if k not in own]
        for n in CUTOFFS:
            hits[n] += target in ranked[:n]
    return {f"hit_rate@{n}": hits[n] / len(targets) for n in CUTOFFS}


def recall(args) -> dict:
    users = queries_and_targets(args.data)
    depth = max(CUTOFFS) + max(len(s) for s in users["seen"])
    items, counts = users["popularity"]
    popular = items[np.argsort(-counts, kind="stable")].tolist()
    result = {"users": len(users["target"]), "most_popular": hit_rates(
        [[k for k in popular[:depth + 1] if k != q] for q in users["query"].tolist()], users["target"], users["seen"])}
    for named in args.vectors:
        name, directory = named.split("=", 1)
        lists = ranked_lists(Path(directory), users["query"], depth)
        result[name] = {**hit_rates(lists, users["target"], users["seen"]),
                        "queries_without_vector": sum(not ranked for ranked in lists), "vectors": directory}
    return result


def export(args) -> dict:
    from omegaconf import OmegaConf

    from ctr.config import EmbeddingExportConfig
    from ctr.parallel.launcher import launch_workers
    from ctr.train.embedding_export import export_worker

    cfg = OmegaConf.merge(OmegaConf.structured(EmbeddingExportConfig), {
        "run_dir": args.run, "tables": args.tables, "output": args.output, "nproc_per_node": args.ranks,
        "backend": "gloo"})
    runs = []
    for _ in range(args.repetitions):
        started = time.perf_counter()
        summary = launch_workers(export_worker, args.ranks, OmegaConf.to_container(cfg))[0]
        summary["wall_seconds"] = time.perf_counter() - started
        runs.append(summary)
    return {"ranks": args.ranks, "tables": args.tables, "runs": [
        {k: run[k] for k in ("rows", "seconds", "vectors_per_second", "build_and_load_seconds", "wall_seconds")}
        for run in runs], "vectors_per_second_median": float(np.median([r["vectors_per_second"] for r in runs]))}


def search_throughput(args) -> dict:
    faiss.omp_set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    index = build_index(vectors, metric="inner_product")
    seconds = []
    for _ in range(args.repetitions):
        started = time.perf_counter()
        search(index, queries, args.k, metric="inner_product")
        seconds.append(time.perf_counter() - started)
    return {"rows": args.rows, "dim": args.dim, "batch": args.queries, "k": args.k, "seconds": seconds,
            "queries_per_second_median": args.queries / float(np.median(seconds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("recall")
    p.add_argument("--vectors", nargs="+", default=[], help="name=<export directory of an item table>")
    p.add_argument("--data", nargs="*", default=["data=movielens100k_item2vec"], help="launch/train.py data overrides")
    p = commands.add_parser("export")
    p.add_argument("--run", required=True)
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--output", default=None)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repetitions", type=int, default=3)
    p = commands.add_parser("search")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=4096)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    result = {"recall": recall, "export": export, "search": search_throughput}[args.command](args)
    print(json.dumps({"command": " ".join(sys.argv), "machine": machine(), **result}))


if __name__ == "__main__":
    main()

"""Trivial baselines for a shard directory's test AUC: a constant predictor and logistic regression.

    .venv/bin/python benchmarks/logistic_baseline.py outputs/shards/criteo-kaggle-10k [--num-embeddings 100000]
    .venv/bin/python benchmarks/logistic_baseline.py outputs/shards/movielens100k

Same splits and same features as `launch/train.py` on those shards (ratio splits for
Criteo shards, the preprocessed splits for CSV shards): the dense features, and one
weight per hashed id (id modulo the table size), summed over a bag's ids, shared by the
features of a shared table. Plain PyTorch on one process; the epoch with the best
validation AUC is scored on the test split (the last epoch when there is no val split).
"""

import argparse
import json

import torch
from torchmetrics.functional.classification import binary_auroc
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ctr.data.reader import batches
from ctr.data.shards import ShardSource
from ctr.features.hashing import ModuloHashing, feature_table_sizes
from ctr.features.tables import embedding_bag_configs


class LogisticRegression(torch.nn.Module):
    """logit = w·dense + b + Σ over features of the weights of its (hashed) ids."""

    def __init__(self, num_dense: int, weights: EmbeddingBagCollection) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(num_dense, 1)
        self.weights = weights
        for table in weights.embedding_bags.values():
            torch.nn.init.zeros_(table.weight)

    def forward(self, batch) -> torch.Tensor:
        return self.dense(batch.dense_features).squeeze(1) + self.weights(batch.sparse_features).values().sum(1)


def _scores(model: LogisticRegression, source: ShardSource, split: str, hashing: ModuloHashing):
    with torch.no_grad():
        parts = [(model(hashing(b)), b.labels) for b in batches(source, split, 8192, 0, 1, drop_last=False)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _log_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shards")
    parser.add_argument("--num-embeddings", type=int, default=100_000, help="as embedding.num_embeddings")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--l2", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    csv = "split" in ShardSource(args.shards, shuffle_buffer=0).meta["shards"][0]
    # Train rows in one seeded shuffled order, as training reads them.
    source = ShardSource(args.shards, split_by="preprocessed" if csv else "ratio", seed=args.seed)
    sizes = feature_table_sizes(source.sparse_names, args.num_embeddings, {}, source.shared_tables)
    hashing = ModuloHashing(sizes)
    tables = embedding_bag_configs(hashing.table_rows(), {name: 1 for name in sizes}, "fp32", source.shared_tables)
    model = LogisticRegression(len(source.dense_names), EmbeddingBagCollection(tables=tables))
    optimizer = torch.optim.Adagrad(model.parameters(), lr=args.lr)
    has_val = source.num_rows("val") > 0
    best = (-1.0, None, None)
    for epoch in range(args.epochs):
        for batch in batches(source, "train", 256, 0, 1, drop_last=False):
            batch = hashing(batch)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
            loss = loss + args.l2 * sum((p**2).sum() for p in model.parameters())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if has_val:
            val_logits, val_labels = _scores(model, source, "val", hashing)
            val_auc = binary_auroc(val_logits, val_labels.long()).item()
        if not has_val or val_auc > best[0]:
            logits, labels = _scores(model, source, "test", hashing)
            best = (val_auc if has_val else None, binary_auroc(logits, labels.long()).item(), _log_loss(logits, labels))
    _, test_labels = _scores(model, source, "test", hashing)
    train_rate = float(_scores(model, source, "train", hashing)[1].mean())
    constant = binary_auroc(torch.full_like(test_labels, train_rate), test_labels.long()).item()
    print(json.dumps({
        "test_rows": len(test_labels), "test_positive_rate": round(float(test_labels.mean()), 4),
        "constant_predictor_test_auc": constant,
        "logistic_regression_val_auc": round(best[0], 4) if has_val else None,
        "constant_predictor_test_log_loss": round(_log_loss(torch.full_like(test_labels, train_rate).logit(), test_labels), 4),
        "logistic_regression_test_auc": round(best[1], 4), "logistic_regression_test_log_loss": round(best[2], 4),
    }, indent=2))


if __name__ == "__main__":
    main()

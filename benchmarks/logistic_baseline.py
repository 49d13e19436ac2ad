"""Trivial baselines for a data config's test AUC: a constant predictor and logistic regression.

    .venv/bin/python benchmarks/logistic_baseline.py data=criteo_kaggle10k
    .venv/bin/python benchmarks/logistic_baseline.py data=movielens100k --epochs 5
    .venv/bin/python benchmarks/logistic_baseline.py data=criteo data.split_by=day data.path=outputs/shards/days

The arguments are `launch/train.py`'s overrides: the data config is composed and its source
built exactly as training builds it, so the baseline scores the same splits (ratios, days,
files, order, timestamp: whatever the config says) and the same features: the dense
features, and one weight per hashed id (id modulo `embedding.num_embeddings` or its
per-feature setting), summed over a bag's ids, shared by the features of a shared table.
It trains at the config's `trainer.batch_size` (the data's recommendation unless set).
Plain PyTorch on one process; the epoch with the best validation AUC is scored on the test
split (the last epoch when there is no val split). It prints the rows and positives of
each split it used.
"""

import argparse
import json
from pathlib import Path
from typing import Sequence

import torch
from torchmetrics.functional.classification import binary_auroc
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ctr.config import group_overrides, register_configs
from ctr.data.reader import batches
from ctr.features.hashing import ModuloHashing, feature_table_sizes
from ctr.features.tables import embedding_bag_configs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


def _scores(model: LogisticRegression, source, split: str, hashing: ModuloHashing):
    with torch.no_grad():
        parts = [(model(hashing(b)), b.labels) for b in batches(source, split, 8192, 0, 1, drop_last=False)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _log_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).item()


def fit(overrides: Sequence[str], epochs: int = 10, lr: float = 0.05, l2: float = 1e-5, seed: int = 0) -> dict:
    """Trains the baselines on the splits `overrides` (launch/train.py's) give; their figures."""
    torch.manual_seed(seed)
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", overrides=group_overrides(list(overrides)))
    source = instantiate(cfg.data)
    batch_size = cfg.trainer.batch_size
    shared = getattr(source, "shared_tables", {})
    sizes = feature_table_sizes(source.sparse_names, cfg.embedding.num_embeddings,
                                dict(cfg.embedding.num_embeddings_per_feature), shared)
    hashing = ModuloHashing(sizes)
    tables = embedding_bag_configs(hashing.table_rows(), {name: 1 for name in sizes}, "fp32", shared)
    model = LogisticRegression(len(source.dense_names), EmbeddingBagCollection(tables=tables))
    optimizer = torch.optim.Adagrad(model.parameters(), lr=lr)
    has_val = source.num_rows("val") > 0
    best = (-1.0, None, None)
    for epoch in range(epochs):
        for batch in batches(source, "train", batch_size, 0, 1, drop_last=False):
            batch = hashing(batch)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
            loss = loss + l2 * sum((p**2).sum() for p in model.parameters())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if has_val:
            val_logits, val_labels = _scores(model, source, "val", hashing)
            val_auc = binary_auroc(val_logits, val_labels.long()).item()
        if not has_val or val_auc > best[0]:
            logits, labels = _scores(model, source, "test", hashing)
            best = (val_auc if has_val else None, binary_auroc(logits, labels.long()).item(), _log_loss(logits, labels))
    labels = {split: _scores(model, source, split, hashing)[1] for split in ("train", "val", "test")
              if source.num_rows(split)}
    test_labels, train_rate = labels["test"], float(labels["train"].mean())
    constant = binary_auroc(torch.full_like(test_labels, train_rate), test_labels.long()).item()
    return {
        "splits": {split: {"rows": len(y), "positives": int(y.sum())} for split, y in labels.items()},
        "batch_size": batch_size,
        "test_positive_rate": round(float(test_labels.mean()), 4),
        "constant_predictor_test_auc": constant,
        "logistic_regression_val_auc": round(best[0], 4) if has_val else None,
        "constant_predictor_test_log_loss": round(_log_loss(torch.full_like(test_labels, train_rate).logit(), test_labels), 4),
        "logistic_regression_test_auc": round(best[1], 4), "logistic_regression_test_log_loss": round(best[2], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="+", help="launch/train.py overrides, e.g. data=criteo_kaggle10k")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--l2", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(fit(args.overrides, args.epochs, args.lr, args.l2, args.seed), indent=2))


if __name__ == "__main__":
    main()

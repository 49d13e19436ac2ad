"""Trivial baselines for a shard directory's test AUC: a constant predictor and logistic regression.

    .venv/bin/python benchmarks/logistic_baseline.py outputs/shards/criteo-kaggle-10k [--num-embeddings 100000]

Same splits and same features as `launch/train.py data=criteo`: the 13 dense features
and the 26 hashed ids taken modulo the table size, one weight per id. Plain PyTorch on one
process; the epoch with the best validation AUC is scored on the test split.
"""

import argparse
import json

import torch
from torchmetrics.functional.classification import binary_auroc

from ctr.data.shards import ShardSource


class LogisticRegression(torch.nn.Module):
    def __init__(self, num_dense: int, num_sparse: int, num_embeddings: int) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(num_dense, 1)
        self.weights = torch.nn.Embedding(num_sparse * num_embeddings, 1)
        torch.nn.init.zeros_(self.weights.weight)
        self.offsets = torch.arange(num_sparse) * num_embeddings
        self.num_embeddings = num_embeddings

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        rows = ids % self.num_embeddings + self.offsets
        return self.dense(dense).squeeze(1) + self.weights(rows).sum(dim=(1, 2))


def split(source: ShardSource, name: str):
    rows = source.rows(name, 0, source.num_rows(name))
    return torch.from_numpy(rows.dense), torch.from_numpy(rows.ids), torch.from_numpy(rows.labels)


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

    source = ShardSource(args.shards, shuffle_buffer=0)
    (train_x, train_ids, train_y), val, test = (split(source, s) for s in ("train", "val", "test"))
    model = LogisticRegression(train_x.shape[1], train_ids.shape[1], args.num_embeddings)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=args.lr)
    best = (-1.0, None)
    for epoch in range(args.epochs):
        for batch in torch.randperm(len(train_y)).split(256):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(train_x[batch], train_ids[batch]), train_y[batch])
            loss = loss + args.l2 * sum((p**2).sum() for p in model.parameters())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_auc = binary_auroc(model(val[0], val[1]), val[2].long()).item()
            if val_auc > best[0]:
                best = (val_auc, binary_auroc(model(test[0], test[1]), test[2].long()).item())
    constant = binary_auroc(torch.full_like(test[2], float(train_y.mean())), test[2].long()).item()
    print(json.dumps({
        "test_rows": len(test[2]), "test_positive_rate": round(float(test[2].mean()), 4),
        "constant_predictor_test_auc": constant, "logistic_regression_val_auc": round(best[0], 4),
        "logistic_regression_test_auc": round(best[1], 4),
    }, indent=2))


if __name__ == "__main__":
    main()

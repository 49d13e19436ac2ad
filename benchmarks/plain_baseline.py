"""The plain-PyTorch reference of `benchmarks/throughput.py`: what a competent engineer writes
without TorchRec, in one process.

One `nn.EmbeddingBag(sparse=True)` per feature updated by `torch.optim.Adagrad` (which takes
sparse gradients), the model's dense tower with exactly ctr's shapes and FLOPs, updated by
Adam, and autocast for a bf16 dense tower, as ctr does. It is independent of ctr's model code
on purpose: it is the yardstick, not a copy.
"""

import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch

# Adagrad's sparse path warns on every step that it skips the invariant checks.
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

# Per-feature ids as EmbeddingBag takes them: (values, offsets).
FeatureIds = List[Tuple[torch.Tensor, torch.Tensor]]
# One step's input: dense features, ids per feature, labels.
PlainBatch = Tuple[torch.Tensor, FeatureIds, torch.Tensor]


class PlainDeepCrossing(nn.Module):
    """Deep Crossing with one EmbeddingBag per feature: relu(x + W1·relu(W0·x + b0) + b1) units.

    Shapes: dense [B, num_dense], one (values, offsets) pair per feature → logits [B].
    """

    def __init__(self, num_dense: int, table_rows: Sequence[int], dim: int, num_residual_units: int,
                 residual_hidden_dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum", sparse=True, include_last_offset=True) for rows in table_rows)
        width = num_dense + dim * len(table_rows)
        self.units = nn.ModuleList(
            nn.ModuleList([nn.Linear(width, residual_hidden_dim), nn.Linear(residual_hidden_dim, width)])
            for _ in range(num_residual_units)
        )
        self.scoring = nn.Linear(width, 1)

    def forward(self, dense: torch.Tensor, ids: FeatureIds) -> torch.Tensor:
        x = torch.cat([dense, *(table(values, offsets) for table, (values, offsets) in zip(self.tables, ids))], dim=1)
        for inner, outer in self.units:
            x = torch.relu(x + outer(torch.relu(inner(x))))
        return self.scoring(x).squeeze(-1)


class PlainWideAndDeep(nn.Module):
    """Wide & Deep with one EmbeddingBag per feature for the deep part, an MLP (Linear + ReLU
    per hidden width, then a Linear to the logit), and one 1-wide EmbeddingBag per feature
    for the linear part (ctr keeps 4-wide rows, exact for a scalar weight; a plain model needs none).

    Shapes: dense [B, num_dense], one (values, offsets) pair per feature → logits [B].
    """

    def __init__(self, num_dense: int, table_rows: Sequence[int], dim: int, hidden_dims: Sequence[int]) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum", sparse=True, include_last_offset=True) for rows in table_rows)
        self.wide = nn.ModuleList(nn.EmbeddingBag(rows, 1, mode="sum", sparse=True, include_last_offset=True) for rows in table_rows)
        widths = [num_dense + dim * len(table_rows), *hidden_dims]
        layers: List[nn.Module] = []
        for inner, outer in zip(widths, widths[1:]):
            layers += [nn.Linear(inner, outer), nn.ReLU()]
        self.deep = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, dense: torch.Tensor, ids: FeatureIds) -> torch.Tensor:
        x = torch.cat([dense, *(table(values, offsets) for table, (values, offsets) in zip(self.tables, ids))], dim=1)
        wide = sum(table(values, offsets) for table, (values, offsets) in zip(self.wide, ids))
        return (self.deep(x) + wide).squeeze(-1)


def _deep_crossing(model_cfg, num_dense: int, table_rows: Sequence[int], dim: int) -> nn.Module:
    return PlainDeepCrossing(num_dense, table_rows, dim, model_cfg.num_residual_units, model_cfg.residual_hidden_dim)


def _wide_deep(model_cfg, num_dense: int, table_rows: Sequence[int], dim: int) -> nn.Module:
    wide = model_cfg.wide
    if wide.crosses or wide.features is not None:
        raise ValueError("model.wide: the plain Wide & Deep twin has a linear part over every feature and no "
                         "crosses; benchmark it with model.wide.features=null and model.wide.crosses=[]")
    return PlainWideAndDeep(num_dense, table_rows, dim, model_cfg.hidden_dims)


# `model._target_` → the plain twin of that model; a model joins the benchmark by adding its own.
PLAIN_MODELS: Dict[str, Callable[..., nn.Module]] = {
    "ctr.models.deep_crossing.DeepCrossing": _deep_crossing,
    "ctr.models.wide_deep.WideAndDeep": _wide_deep,
}


def build_plain_model(model_cfg, num_dense: int, table_rows: Sequence[int], dim: int) -> nn.Module:
    if model_cfg._target_ not in PLAIN_MODELS:
        raise ValueError(f"model._target_={model_cfg._target_!r}: the plain-PyTorch baseline has no twin of it; "
                         f"expected one of {list(PLAIN_MODELS)} (add one to benchmarks/plain_baseline.py)")
    return PLAIN_MODELS[model_cfg._target_](model_cfg, num_dense, table_rows, dim)


def feature_ids(batch: Batch, keys: Sequence[str]) -> FeatureIds:
    """The batch's hashed ids per feature, as the baseline's data loader would hand them over."""
    features = batch.sparse_features.to_dict()
    return [(features[key].values(), features[key].offsets()) for key in keys]


def host_batch(batch: Batch, keys: Sequence[str], device: torch.device) -> PlainBatch:
    """A batch as the baseline's loader hands it over: on a GPU host in page-locked memory,
    as ctr's batches reach its pipeline, so that both sides copy to the device alike."""
    pin = (lambda t: t.pin_memory()) if device.type == "cuda" else (lambda t: t)
    ids = [(pin(values), pin(offsets)) for values, offsets in feature_ids(batch, keys)]
    return pin(batch.dense_features), ids, pin(batch.labels)


def to_device(batch: PlainBatch, device: torch.device) -> PlainBatch:
    """The step's copy of a `host_batch` to the device (asynchronous from pinned memory; none on CPU)."""
    dense, ids, labels = batch
    move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return move(dense), [(move(values), move(offsets)) for values, offsets in ids], move(labels)


class PlainTrainer:
    """One training step of the plain model: forward, log-loss, backward, sparse Adagrad, Adam."""

    def __init__(self, model: nn.Module, sparse_lr: float, sparse_eps: float, dense_lr: float,
                 autocast_dtype) -> None:
        self.model = model
        tables = {id(p) for table in model.modules() if isinstance(table, nn.EmbeddingBag) for p in table.parameters()}
        self.sparse = torch.optim.Adagrad([p for p in model.parameters() if id(p) in tables], lr=sparse_lr, eps=sparse_eps)
        self.dense = torch.optim.Adam([p for p in model.parameters() if id(p) not in tables], lr=dense_lr)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.autocast_dtype = autocast_dtype

    def step(self, dense: torch.Tensor, ids: FeatureIds, labels: torch.Tensor) -> torch.Tensor:
        self.sparse.zero_grad()
        self.dense.zero_grad()
        with torch.autocast(dense.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            logits = self.model(dense, ids).float()
        loss = self.loss_fn(logits, labels)
        loss.backward()
        self.sparse.step()
        self.dense.step()
        return loss.detach()

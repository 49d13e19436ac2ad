"""The plain-PyTorch baseline's dense tower is ctr's: the same layer shapes, so the same FLOPs."""

import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from plain_baseline import build_plain_model  # noqa: E402

from ctr.build import build_task  # noqa: E402
from tests.hydra_config import TINY, compose  # noqa: E402


def _dense_shapes(model: nn.Module, tables: set) -> list:
    return sorted(tuple(p.shape) for p in model.parameters() if id(p) not in tables)


@pytest.mark.parametrize("model", ["deep_crossing", "wide_deep"])
def test_plain_twin_has_ctrs_dense_tower_and_one_table_per_feature(model):
    overrides = [*TINY, f"model={model}"]
    if model == "wide_deep":
        overrides = [o for o in overrides if "residual" not in o] + ["model.hidden_dims=[24,12]"]
    cfg = compose(*overrides)
    source = instantiate(cfg.data)
    task = build_task(cfg, source, torch.device("cpu"))
    ctr_tables = {id(p) for m in task.modules() if isinstance(m, EmbeddingBagCollection) for p in m.parameters()}
    rows = [cfg.embedding.num_embeddings] * len(source.sparse_names)
    plain = build_plain_model(cfg.model, len(source.dense_names), rows, cfg.embedding.dim)
    plain_tables = {id(p) for m in plain.modules() if isinstance(m, nn.EmbeddingBag) for p in m.parameters()}
    assert _dense_shapes(plain, plain_tables) == _dense_shapes(task.model, ctr_tables)
    bags = [m for m in plain.modules() if isinstance(m, nn.EmbeddingBag)]
    # Deep Crossing: one table per feature; Wide & Deep: and one 1-wide linear table per feature.
    assert len(bags) == len(source.sparse_names) * (2 if model == "wide_deep" else 1)
    dense = torch.randn(3, len(source.dense_names))
    ids = [(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2, 3]))] * len(source.sparse_names)
    assert plain(dense, ids).shape == (3,)


def test_on_cpu_the_baselines_batches_are_the_readers_tensors_uncopied():
    """CPU behaviour is unchanged by the GPU path (pinned host batches, asynchronous copies)."""
    from plain_baseline import host_batch, to_device
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    sparse = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([1, 2, 3, 4]), torch.tensor([1, 1, 1, 1]))
    batch = Batch(torch.randn(2, 3), sparse, torch.tensor([0.0, 1.0]))
    cpu = torch.device("cpu")
    dense, ids, labels = to_device(host_batch(batch, ["b", "a"], cpu), cpu)
    assert dense is batch.dense_features and labels is batch.labels
    assert [v.tolist() for v, _ in ids] == [[3, 4], [1, 2]] and not dense.is_pinned()

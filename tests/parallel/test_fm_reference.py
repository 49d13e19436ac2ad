"""The Factorization Machine in parallel: sharded 2-rank training equals a plain-PyTorch FM
trained in one process (F.embedding_bag tables with row-wise Adagrad, scalar first-order
weights with Adagrad, the dense linear term with Adam, the pairwise term written as the
O(n²) sum over pairs). Tolerance as in `test_reference`."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from ctr.build import build_task
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks
from tests.parallel.test_reference import ATOL, RTOL, STEPS, _table_sizes, _train_sharded

TABLES = "model.embeddings.collection.embedding_bags.t_{}.weight"
FIRST_ORDER = "model.linear.collection.embedding_bags.wide_t_{}.weight"
TINY_FM = [*(o for o in TINY if not o.startswith("model.")), "model=fm", "optimizer.wide.name=adagrad",
           "optimizer.wide.lr=0.1", "optimizer.sparse_lr=0.1", "optimizer.dense_lr=0.01"]


def _plain_fm(cfg, init, global_batch: int):
    """One process, global batches: per-step losses and final weights (first-order as scalars)."""
    source = instantiate(cfg.data)
    sizes = _table_sizes(cfg, source)
    names = source.sparse_names
    v = {f: init[TABLES.format(f)].clone().requires_grad_() for f in names}
    w = {f: init[FIRST_ORDER.format(f)].sum(dim=1).clone().requires_grad_() for f in names}
    dense = {k: init[f"model.dense.{k}"].clone().requires_grad_() for k in ("weight", "bias")}
    opt = cfg.optimizer
    optimizers = [
        RowWiseAdagrad(list(v.values()), lr=opt.sparse_lr, eps=opt.sparse_eps),
        torch.optim.Adagrad(list(w.values()), lr=opt.wide.lr, eps=opt.sparse_eps, initial_accumulator_value=0.0),
        torch.optim.Adam(list(dense.values()), lr=opt.dense_lr),
    ]
    losses = []
    for step in range(source.num_rows("train") // global_batch):
        rows = source.rows("train", step * global_batch, (step + 1) * global_batch)
        ids = torch.from_numpy(rows.ids)
        rows_of = {f: ids[:, i] % sizes[f] for i, f in enumerate(names)}
        vectors = [v[f][rows_of[f]] for f in names]
        pairwise = sum((vectors[i] * vectors[j]).sum(dim=1) for i, j in itertools.combinations(range(len(names)), 2))
        first_order = sum(w[f][rows_of[f]] for f in names)
        logits = F.linear(torch.from_numpy(rows.dense), dense["weight"], dense["bias"]).squeeze(-1) + first_order + pairwise
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(rows.labels))
        for o in optimizers:
            o.zero_grad()
        loss.backward()
        for o in optimizers:
            o.step()
        losses.append(loss.item())
    return losses, v, w, dense


@pytest.mark.parametrize("sharding", ["table_wise", "data_parallel"])
def test_fm_on_two_ranks_equals_a_plain_single_process_fm(tmp_path, sharding):
    world_size = 2
    cfg = compose(*TINY_FM, f"trainer.batch_size={640 // (STEPS * world_size)}", f"sharding={sharding}")
    torch.manual_seed(0)
    init = {k: t.detach().clone() for k, t in build_task(cfg, instantiate(cfg.data), torch.device("cpu")).state_dict().items()}
    torch.save(init, tmp_path / "init.pt")
    run_ranks(_train_sharded, world_size, OmegaConf.to_container(cfg, resolve=True), str(tmp_path / "init.pt"),
              str(tmp_path / "out.pt"), -1)
    sharded = torch.load(tmp_path / "out.pt")
    assert {row["sharding_type"] for row in sharded["plan"]} == {sharding}
    losses, v, w, dense = _plain_fm(cfg, init, cfg.trainer.batch_size * world_size)
    assert len(sharded["losses"]) == len(losses) == STEPS
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(losses), rtol=RTOL, atol=ATOL)
    state = sharded["state"]
    expected = {
        **{TABLES.format(f): t for f, t in v.items()},
        **{f"model.dense.{k}": t for k, t in dense.items()},
    }
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value.detach(), rtol=RTOL, atol=ATOL, msg=lambda m: f"{key}: {m}")
        assert not torch.equal(state[key], init[key]), f"{key} must have trained"
    for f, weights in w.items():
        torch.testing.assert_close(state[FIRST_ORDER.format(f)].sum(dim=1), weights.detach(), rtol=RTOL, atol=ATOL)
        assert torch.count_nonzero(weights) > 0

"""L2 on the table rows a batch reads: `optimizer.sparse_weight_decay` (and `optimizer.wide.weight_decay`)
become FBGEMM's fused `weight_decay` with `weight_decay_mode` L2, through TorchRec's in-backward
optimizer marks; FBGEMM's CPU kernel ignores them, so a CPU run refuses them at start-up."""

from typing import List

import pytest
import torch
from hydra.utils import instantiate
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import ComputeDevice, EmbeddingLocation
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    SplitTableBatchedEmbeddingBagsCodegen,
    WeightDecayMode,
)
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward

from ctr.build import build_task, mark_table_optimizers, table_optimizers
from ctr.parallel.model_parallel import distribute
from ctr.parallel.optimizers import SPARSE_OPTIMIZERS
from ctr.parallel.planner import plan_sharding
from ctr.parallel.process_group import init_distributed, shutdown
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks

TINY_WIDE_DEEP = [*(o for o in TINY if not o.startswith("model.")), "model=wide_deep", "model.hidden_dims=[8,4]"]
DECAY = ["optimizer.sparse_weight_decay=1e-4", "optimizer.wide.weight_decay=1e-3"]


def fused_kernels(model: nn.Module) -> List[SplitTableBatchedEmbeddingBagsCodegen]:
    """FBGEMM's kernels of a sharded model: they sit in its sharded collections' lookups,
    which are not registered submodules."""
    return [kernel for module in model.modules() for lookup in getattr(module, "_lookups", [])
            for kernel in lookup.modules() if isinstance(kernel, SplitTableBatchedEmbeddingBagsCodegen)]


def _source(cfg):
    return instantiate(cfg.data)


def test_each_groups_weight_decay_marks_its_tables_for_fbgemms_l2_mode():
    cfg = compose(*TINY_WIDE_DEEP, *DECAY)
    task = build_task(cfg, _source(cfg), torch.device("meta"))
    mark_table_optimizers(task, cfg.optimizer, torch.device("cuda"))  # marking needs no GPU
    marks = {name: param._optimizer_kwargs[0] for name, param in task.named_parameters() if "embedding_bags" in name}
    deep = [kwargs for name, kwargs in marks.items() if ".wide." not in name]
    wide = [kwargs for name, kwargs in marks.items() if ".wide." in name]
    assert deep and wide
    # the wide weights are 4-wide rows of one scalar (WideLinear): their decay is 4x per entry
    assert {(k["weight_decay"], k["weight_decay_mode"]) for k in deep} == {(1e-4, WeightDecayMode.L2)}
    assert {(k["weight_decay"], k["weight_decay_mode"]) for k in wide} == {(4e-3, WeightDecayMode.L2)}


def _fused_params(kwargs: dict, out_path: str) -> None:
    """Marks a table with `kwargs` as ctr does, shards it on this CPU rank; saves what FBGEMM's kernel got."""
    env = init_distributed("gloo")
    try:
        cfg = compose(*TINY)
        task = build_task(cfg, _source(cfg), torch.device("meta"))
        apply_optimizer_in_backward(SPARSE_OPTIMIZERS["rowwise_adagrad"],
                                    list(task.model.embeddings.collection.parameters()), kwargs)
        plan, _ = plan_sharding(task, env, cfg.sharding, cfg.trainer.batch_size)
        model = distribute(task, env, plan)
        torch.save({(k.optimizer_args.weight_decay, int(k.weight_decay_mode)) for k in fused_kernels(model)},
                   out_path)
    finally:
        shutdown()


def test_torchrec_hands_the_marks_weight_decay_to_fbgemms_kernel(tmp_path):
    cfg = compose(*TINY, "optimizer.sparse_weight_decay=1e-4")
    (_, optimizer), = table_optimizers(build_task(cfg, _source(cfg), torch.device("meta")), cfg.optimizer).values()
    run_ranks(_fused_params, 1, optimizer.kwargs(), str(tmp_path / "out.pt"))
    decay, = torch.load(tmp_path / "out.pt")
    assert decay == (pytest.approx(1e-4), int(WeightDecayMode.L2))


def _two_steps(mode: WeightDecayMode) -> torch.Tensor:
    kernel = SplitTableBatchedEmbeddingBagsCodegen(
        [(5, 4, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.1, eps=1e-8, weight_decay=0.5, weight_decay_mode=mode,
    )
    with torch.no_grad():
        kernel.weights_host.fill_(2.0)
    for scale in (1.0, 3.0):  # two steps: row-wise Adagrad's first step has the same size with or without decay
        (scale * kernel(torch.tensor([0, 1]), torch.tensor([0, 1, 2])).sum()).backward()
    return kernel.split_embedding_weights()[0]


def test_fbgemms_cpu_kernel_ignores_the_weight_decay_which_is_why_a_cpu_run_refuses_it():
    """When this fails, FBGEMM's CPU kernel applies the decay: lift the refusal in
    `ctr.parallel.optimizers.apply_table_optimizer`."""
    torch.testing.assert_close(_two_steps(WeightDecayMode.L2), _two_steps(WeightDecayMode.NONE))


def test_a_cpu_run_refuses_table_weight_decay_naming_the_key():
    cfg = compose(*TINY_WIDE_DEEP, "optimizer.wide.weight_decay=1e-3")
    task = build_task(cfg, _source(cfg), torch.device("meta"))
    with pytest.raises(ValueError, match="optimizer.wide.weight_decay: FBGEMM's CPU kernel leaves the weight decay out"):
        mark_table_optimizers(task, cfg.optimizer, torch.device("cpu"))
    cfg = OmegaConf.merge(cfg, {"optimizer": {"wide": {"weight_decay": None}}})
    mark_table_optimizers(build_task(cfg, _source(cfg), torch.device("meta")), cfg.optimizer, torch.device("cpu"))

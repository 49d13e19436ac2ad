"""`embedding.update`: a frozen table's weights are bitwise unchanged by training (fused and
data-parallel, 1 and 2 ranks); an every_k_steps table changes only after steps k, 2k, ...;
the other tables train as usual."""

from typing import Dict, List

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ctr.build import build_task, table_names, update_settings
from ctr.parallel.planner import sharding_constraints
from ctr.parallel.table_updates import forced_data_parallel
from ctr.parallel.state import full_state_dict
from ctr.train.loop import Hooks, train
from ctr.train.run import _train_batches
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks, trainable_rank

WEIGHT = "model.embeddings.collection.embedding_bags.{}.weight"
STEPS = 10


def _train_with_snapshots(cfg_dict: dict, out_path: str) -> None:
    """Trains STEPS steps; rank 0 saves the plan and the full tables before and after every step."""
    with trainable_rank(cfg_dict) as (cfg, env, built):
        snapshots: List[Dict[str, torch.Tensor]] = []

        def snapshot(step: int = 0) -> None:
            state = full_state_dict(built.model, env.device)
            if env.is_main:
                snapshots.append({k: v for k, v in state.items() if "embedding_bags" in k})

        snapshot()
        batches = _train_batches(built.source, built.hashing, cfg, env, 0, STEPS)
        train(built.model, built.optimizer, batches, env, STEPS, 10**9, progress_bar=False,
              hooks=Hooks(checkpoint_every_steps=1, on_checkpoint=snapshot))
        if env.is_main:
            torch.save({"snapshots": snapshots, "plan": built.rows}, out_path)


def _run(tmp_path, world_size: int, *overrides: str) -> dict:
    cfg = compose(*TINY, f"trainer.batch_size={640 // (STEPS * world_size)}", *overrides)
    run_ranks(_train_with_snapshots, world_size, OmegaConf.to_container(cfg, resolve=True), str(tmp_path / "out.pt"))
    return torch.load(tmp_path / "out.pt")


def _plan(out: dict) -> Dict[str, tuple]:
    return {row["table"]: (row["sharding_type"], row["compute_kernel"]) for row in out["plan"]}


@pytest.mark.parametrize("world_size,sharding", [(1, "table_wise"), (2, "table_wise"), (2, "data_parallel")])
def test_a_frozen_table_is_bitwise_unchanged_and_the_others_train(tmp_path, world_size, sharding):
    out = _run(tmp_path, world_size, f"sharding={sharding}", "+embedding.update.cat_0=frozen",
               "+embedding.update.cat_3=frozen")
    first, last = out["snapshots"][0], out["snapshots"][-1]
    assert len(out["snapshots"]) == STEPS + 1
    assert _plan(out)["t_cat_0"][0] == sharding  # frozen keeps the planned sharding
    for table in ("t_cat_0", "t_cat_3"):
        assert torch.equal(first[WEIGHT.format(table)], last[WEIGHT.format(table)]), table
    for table in ("t_cat_1", "t_cat_2", "t_cat_4", "t_cat_5"):
        assert not torch.equal(first[WEIGHT.format(table)], last[WEIGHT.format(table)]), f"{table} must train"


def test_an_every_k_steps_table_changes_only_at_multiples_of_k(tmp_path):
    k = 3
    out = _run(tmp_path, 2, "+embedding.update.cat_1=every_k_steps", f"embedding.update_every_k={k}")
    assert _plan(out)["t_cat_1"] == ("data_parallel", "dense")
    assert _plan(out)["t_cat_2"] == ("table_wise", "fused")
    every_k, every_step = WEIGHT.format("t_cat_1"), WEIGHT.format("t_cat_2")
    snapshots = out["snapshots"]
    changed_at = [step for step in range(1, STEPS + 1) if not torch.equal(snapshots[step][every_k], snapshots[step - 1][every_k])]
    assert changed_at == [3, 6, 9]
    assert all(not torch.equal(snapshots[s][every_step], snapshots[s - 1][every_step]) for s in range(1, STEPS + 1))


@pytest.mark.parametrize("overrides,message", [
    (["+embedding.update.nope=frozen"], r"embedding.update names \['nope'\], which are not tables of the model; its tables: \['cat_0'"),
    (["+embedding.update.cat_0=every_k_steps", "embedding.update_every_k=0"], "embedding.update_every_k=0"),
    (["+embedding.update.cat_0=every_k_steps", "+sharding.tables.t_cat_0.sharding_type=column_wise"],
     "sharding.tables.t_cat_0.sharding_type='column_wise', but embedding.update"),
])
def test_bad_update_settings_stop_at_start_up_naming_the_key(overrides, message):
    cfg = compose(*TINY, *overrides)
    task = build_task(cfg, instantiate(cfg.data), torch.device("meta"))
    with pytest.raises((KeyError, ValueError), match=message):
        sharding_constraints(task, cfg.sharding, "cpu", 2, forced_data_parallel(update_settings(table_names(task), cfg)))


def test_a_misspelt_update_mode_fails_when_the_config_is_composed():
    with pytest.raises(Exception, match="frozn"):
        compose(*TINY, "+embedding.update.cat_0=frozn")

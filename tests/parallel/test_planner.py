"""Sharding from config: forced types, per-table overrides, start-up errors that name the
key, the plan report, and planning a cluster far bigger than this machine."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate

from ctr.build import build_task, mark_table_optimizers
from ctr.parallel.hardware import GIB, MemoryFacts
from ctr.parallel.plan_summary import format_estimates, format_plan, plan_report, plan_rows
from ctr.parallel.planner import CPU_SHARDING_TYPES, build_planner, plan_sharding, sharders, uses_uvm_caching
from ctr.parallel.process_group import DistributedEnv
from ctr.train.plan import plan_job
from ctr.config import register_configs
from tests.hydra_config import CONFIGS, TINY, compose

REPO = Path(__file__).resolve().parents[2]
CPU_PAIR = DistributedEnv(0, 2, 0, 2, torch.device("cpu"), "gloo")
# An H200-sized rank on a 2 TiB host of 8 ranks, as `memory_facts` would read it there.
H200 = MemoryFacts(141 * GIB, 256 * GIB, "NVIDIA H200: total memory", "this host's memory / 8 local ranks", 140 * GIB)


def _plan(*overrides: str, world_size: int = 2, device: str = "cpu", memory: MemoryFacts = H200):
    """Plans the TINY model in this process, as rank 0 of `world_size` would, with `memory` per rank."""
    cfg = compose(*TINY, *overrides)
    task = build_task(cfg, instantiate(cfg.data), torch.device("meta"))
    mark_table_optimizers(task, cfg.optimizer, torch.device(device))
    planner, estimates = build_planner(task, cfg.sharding, cfg.trainer.batch_size, world_size, world_size, device,
                                       memory)
    plan = planner.plan(task, sharders())
    return plan, plan_rows(plan, task), estimates


def _by_table(rows, key: str) -> dict:
    return {row["table"]: row[key] for row in rows}


@pytest.mark.parametrize("sharding_type", CPU_SHARDING_TYPES)
def test_a_forced_type_applies_to_every_table(sharding_type):
    _, rows, _ = _plan(f"sharding.sharding_type={sharding_type}", "sharding.min_partition=4")
    assert set(_by_table(rows, "sharding_type").values()) == {sharding_type}


@pytest.mark.parametrize("sharding_type", ["row_wise", "table_row_wise"])
def test_row_wise_types_plan_for_gpus(sharding_type):
    _, rows, _ = _plan(f"sharding.sharding_type={sharding_type}", device="cuda")
    assert set(_by_table(rows, "sharding_type").values()) == {sharding_type}
    assert all(row["ranks"] == [0, 1] for row in rows)


@pytest.mark.parametrize(
    "override,key",
    [
        ("sharding=row_wise", "sharding.sharding_type='row_wise'"),
        ("sharding=table_row_wise", "sharding.sharding_type='table_row_wise'"),
        ("+sharding.tables.t_cat_0.sharding_type=row_wise", "sharding.tables.t_cat_0.sharding_type='row_wise'"),
    ],
)
def test_row_wise_types_fail_at_start_up_on_cpu_saying_what_to_use(override, key):
    cfg = compose(*TINY, override)
    task = build_task(cfg, instantiate(cfg.data), torch.device("meta"))
    with pytest.raises(ValueError) as error:
        plan_sharding(task, CPU_PAIR, cfg.sharding, cfg.trainer.batch_size)
    message = str(error.value)
    assert key in message and "cannot run on cpu" in message and "needs CUDA" in message
    assert "table_wise" in message and "column_wise" in message


def test_per_table_overrides_set_type_and_pin_ranks():
    _, rows, _ = _plan("sharding=mixed", "sharding.min_partition=4")
    types, ranks = _by_table(rows, "sharding_type"), _by_table(rows, "ranks")
    assert types["t_cat_0"] == "data_parallel" and _by_table(rows, "compute_kernel")["t_cat_0"] == "dense"
    assert (types["t_cat_1"], ranks["t_cat_1"]) == ("column_wise", [1, 0])
    assert types["t_cat_2"] == "table_column_wise"
    assert (types["t_cat_3"], ranks["t_cat_3"]) == ("table_wise", [1])
    assert {types[f"t_cat_{i}"] for i in (4, 5)} == {"table_wise"}


def test_a_kernel_override_is_planned():
    _, rows, _ = _plan("+sharding.tables.t_cat_0.compute_kernel=fused_uvm_caching", device="cuda")
    assert _by_table(rows, "compute_kernel")["t_cat_0"] == "fused_uvm_caching"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["+sharding.tables.t_nope.ranks=[0]"], "sharding.tables names ['t_nope']"),
        (["+sharding.tables.t_cat_0.compute_kernel=fused_uvm"], "sharding.tables.t_cat_0.compute_kernel='fused_uvm'"),
        (["sharding=data_parallel", "+sharding.tables.t_cat_0.ranks=[0]"], "sharding.tables.t_cat_0.ranks needs"),
        (["+sharding.tables.t_cat_0.ranks=[2]"], "sharding.tables.t_cat_0.ranks=[2]: expected ranks in [0, 2)"),
        (["+sharding.tables.t_cat_0.ranks=[0,1]"], "a table-wise table lives on exactly one rank"),
        (["sharding=column_wise", "+sharding.tables.t_cat_0.ranks=[0,1,0]"], "must split into 3 column shards"),
        (["+sharding.tables.t_cat_0.sharding_type=diagonal"], "sharding.tables.t_cat_0.sharding_type: Invalid value"),
        (["+sharding.tables.t_cat_0.compute_kernel=key_value"], "expected one of [dense, fused, fused_uvm, "),
        (["+sharding.tables.t_cat_0.rank=1"], "sharding.tables.t_cat_0.rank: not a table override"),
        (["sharding.topology.world_size=64"], "sharding.topology.world_size=64 but this job has 2"),
        (["sharding=uvm_caching"], "sharding.compute_kernel='fused_uvm_caching' needs CUDA"),
        (["+sharding.tables.t_cat_1.cache_load_factor=0"], "sharding.tables.t_cat_1.cache_load_factor=0.0: expected a fraction"),
    ],
)
def test_a_bad_sharding_option_fails_at_start_up_naming_its_key(overrides, expected):
    cfg = compose(*TINY, *overrides)
    task = build_task(cfg, instantiate(cfg.data), torch.device("meta"))
    with pytest.raises((ValueError, KeyError)) as error:
        plan_sharding(task, CPU_PAIR, cfg.sharding, cfg.trainer.batch_size)
    assert expected in str(error.value)


def test_the_plan_report_carries_the_planners_estimates():
    plan, rows, estimates = _plan("sharding=auto", "sharding.memory_budget_gb=1")
    report = json.loads(json.dumps(plan_report(plan, rows, estimates)))
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    for rank in report["ranks"]:
        assert 0 < rank["ddr_bytes"] <= rank["ddr_capacity_bytes"] == 1024**3
        assert rank["perf_ms"]["total"] > 0
    assert report["planner"]["world_size"] == 2 and report["planner"]["slowest_rank_perf_ms"] > 0
    assert sum(sum(row["bytes_per_rank"].values()) for row in rows) >= 6 * 200 * 8 * 4
    table = format_plan(rows)
    assert "rows x dim" in table and "t_cat_5" in table and "200x8" in table
    assert "rank   1: ddr" in format_estimates(estimates)


def test_plan_says_when_a_model_does_not_fit():
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(
            config_name="criteo_1tb_64gpu",
            overrides=["embedding.dim=512", "sharding.topology.world_size=1", "sharding.topology.local_world_size=1"],
        )
    result = plan_job(cfg)
    assert not result.fits and "DOES NOT FIT" in result.text and "Increase the number of devices" in result.text


def test_plan_for_64_gpus_fits_and_reports_every_rank(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launch/plan.py", "--config-name", "criteo_1tb_64gpu", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "64 ranks" in proc.stdout and "FITS" in proc.stdout
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["fits"] and len(report["ranks"]) == 64 and len(report["tables"]) == 26
    assert max(r["hbm_bytes"] for r in report["ranks"]) < 80 * 1024**3


def test_proposers_and_storage_reservation_come_from_config():
    greedy = "torchrec.distributed.planner.proposers.GreedyProposer"
    heuristic = "torchrec.distributed.planner.storage_reservations.HeuristicalStorageReservation"
    _, default_rows, default = _plan("sharding=auto")
    _, rows, chosen = _plan(
        "sharding=auto", f"sharding.proposers=[{{_target_:{greedy}}}]", f"sharding.storage_reservation._target_={heuristic}"
    )
    assert 0 < chosen.planner["proposals"] < default.planner["proposals"]
    assert len(rows) == len(default_rows) == 6


@pytest.mark.parametrize("model", [
    ["model=deep_crossing", "model.num_residual_units=1"],
    ["model=wide_deep", "model.hidden_dims=[8]", "model.wide.crosses=[{features: [movie, userGenres], num_embeddings: 30}]"],
], ids=["deep_crossing", "wide_deep"])
def test_a_shared_table_appears_once_in_the_plan(model):
    """Two genre features read one table: it is built once and sharded once (per model part)."""
    source = SimpleNamespace(sparse_names=["movie", "movieGenres", "userGenres"], dense_names=["x"],
                             shared_tables={"genre": ["movieGenres", "userGenres"]})
    cfg = compose(*(o for o in TINY if not o.startswith("model.")), *model)
    task = build_task(cfg, source, torch.device("meta"))
    mark_table_optimizers(task, cfg.optimizer, torch.device("cpu"))
    planner, _ = build_planner(task, cfg.sharding, cfg.trainer.batch_size, 2, 2, "cpu", H200)
    tables = [row["table"] for row in plan_rows(planner.plan(task, sharders()), task)]
    expected = ["t_movie", "t_genre"]
    if "model=wide_deep" in model:
        expected += ["wide_t_movie", "wide_t_genre", "wide_t_movie_x_userGenres"]
    assert sorted(tables) == sorted(expected)
    genre = next(t for t in task.model.embeddings.collection.embedding_bag_configs() if t.name == "t_genre")
    assert genre.feature_names == ["movieGenres", "userGenres"]


def test_the_planner_plans_for_the_memory_the_device_has_and_records_it():
    """Not TorchRec's assumed 32 GiB: an H200's 141 GiB, less the storage reservation."""
    plan, rows, estimates = _plan("sharding=auto", device="cuda")
    report = json.loads(json.dumps(plan_report(plan, rows, estimates)))
    assumed = report["memory_assumed"]
    assert (assumed["hbm_bytes"], assumed["host_bytes"]) == (141 * GIB, 256 * GIB)
    assert "H200" in assumed["hbm_source"] and assumed["memory_budget"] is None
    for rank in report["ranks"]:
        assert 100 * GIB < rank["hbm_capacity_bytes"] <= 141 * GIB
        assert 200 * GIB < rank["ddr_capacity_bytes"] <= 256 * GIB
    assert "hbm 141.00GiB (NVIDIA H200: total memory)" in format_estimates(estimates)


def test_a_memory_budget_caps_the_devices_memory_and_says_so():
    plan, rows, estimates = _plan("sharding=auto", "sharding.memory_budget_gb=8", device="cuda")
    report = plan_report(plan, rows, estimates)
    assert report["memory_assumed"]["memory_budget"] == {"key": "sharding.memory_budget_gb", "gb": 8, "caps": "hbm"}
    assert all(rank["hbm_capacity_bytes"] <= 8 * GIB for rank in report["ranks"])
    assert "hbm capped by sharding.memory_budget_gb=8" in format_estimates(estimates)


def test_uvm_caching_plans_cached_tables_with_their_load_factor_and_the_prefetch_pipeline():
    plan, rows, estimates = _plan(
        "sharding=uvm_caching", "sharding.cache_load_factor=0.1", "+sharding.tables.t_cat_0.cache_load_factor=0.5",
        device="cuda",
    )
    assert set(_by_table(rows, "compute_kernel").values()) == {"fused_uvm_caching"}
    shardings = {name: s for module_plan in plan.plan.values() for name, s in module_plan.items()}
    assert shardings["t_cat_0"].cache_params.load_factor == 0.5
    assert {shardings[f"t_cat_{i}"].cache_params.load_factor for i in range(1, 6)} == {0.1}
    assert all(s.cache_params.prefetch_pipeline for s in shardings.values())
    assert uses_uvm_caching(plan)
    # The tables live in host memory; the cache in HBM: the memory report shows both per rank.
    assert all(rank["ddr_bytes"] > 0 and rank["hbm_bytes"] > 0 for rank in estimates.ranks)
    assert "ddr" in format_estimates(estimates) and "hbm" in format_estimates(estimates)


def test_a_plan_without_uvm_caching_keeps_the_plain_pipeline():
    # The kernel is fixed: left free on CUDA, TorchRec's planner may itself pick UVM caching.
    plan, rows, _ = _plan("sharding=table_wise", "sharding.compute_kernel=fused", device="cuda")
    assert set(_by_table(rows, "compute_kernel").values()) == {"fused"} and not uses_uvm_caching(plan)

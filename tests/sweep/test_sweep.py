"""Hydra multirun: each job a full 2-rank distributed job, ending in a summary."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctr.sweep.summary import write_summary
from tests.hydra_config import TINY

REPO = Path(__file__).resolve().parents[2]


def _sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/train.py", "-m", *TINY, "distributed.nproc_per_node=2",
         f"hydra.sweep.dir={tmp_path}", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )


def _summary(sweep_dir: Path):
    with open(sweep_dir / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_two_by_two_sweep_runs_distributed_jobs_marks_the_failed_ones_and_summarises_them(tmp_path):
    # FBGEMM has no CPU kernel for a fused Adam: those two jobs fail at start-up, the others complete.
    proc = _sweep(tmp_path, "embedding.dim=4,8", "optimizer.sparse=adam,rowwise_adagrad")
    assert "failed" in proc.stdout + proc.stderr
    rows = _summary(tmp_path)
    assert len(rows) == 4
    assert {(r["embedding.dim"], r["optimizer.sparse"]) for r in rows} == {
        ("4", "adam"), ("4", "rowwise_adagrad"), ("8", "adam"), ("8", "rowwise_adagrad")}
    for row in rows:
        job_dir = tmp_path / row["job"]
        if row["optimizer.sparse"] == "adam":
            assert row["status"] == "failed" and row["test_auc"] == ""
            error = json.loads((job_dir / "job.json").read_text())["error"]
            assert "no FBGEMM CPU kernel" in error or "ChildFailedError" in error
            continue
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and 0 < metrics["test_auc"] < 1
        assert (job_dir / "plan.json").exists()
        assert (job_dir / ".hydra" / "config.yaml").exists()
        assert (job_dir / "train_rank1.log").exists()
        assert row["status"] == "completed" and float(row["test_auc"]) > 0 and float(row["samples_per_s"]) > 0
    completed = {r["embedding.dim"]: int(r["embedding_bytes"]) for r in rows if r["status"] == "completed"}
    assert completed["8"] == 2 * completed["4"], "embedding bytes must come from the job's own plan"
    assert "| job |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_summary_is_rebuilt_from_an_existing_sweep_directory(tmp_path):
    for job, (dim, auc) in enumerate([(4, 0.61), (8, 0.63)]):
        job_dir = tmp_path / str(job)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(f"- embedding.dim={dim}\n")
        (job_dir / "metrics.json").write_text(json.dumps({"test_auc": auc, "embedding_bytes": dim * 1000}))
        (job_dir / "job.json").write_text(json.dumps({"status": "completed", "wall_seconds": 3.0}))
    (tmp_path / "2" / ".hydra").mkdir(parents=True)
    (tmp_path / "2" / ".hydra" / "overrides.yaml").write_text("- embedding.dim=16\n")
    proc = subprocess.run(
        [sys.executable, "launch/sweep_summary.py", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    rows = _summary(tmp_path)
    assert [(r["embedding.dim"], r["status"], r["test_auc"]) for r in rows] == [
        ("4", "completed", "0.61"), ("8", "completed", "0.63"), ("16", "unfinished", ""),
    ]
    assert write_summary(tmp_path) and (tmp_path / "summary.png").exists()


def test_optuna_search_config_loads_with_its_search_space():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ctr.config import register_configs
    from tests.hydra_config import CONFIGS

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(
            config_name="config", overrides=["hydra/sweeper=tune_auc", "hydra.sweeper.n_trials=3"],
            return_hydra_config=True,
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.n_trials == 3
    assert set(sweeper.params) == {
        "optimizer.dense_lr", "optimizer.sparse_lr", "embedding.dim", "embedding.num_embeddings",
    }


@pytest.mark.parametrize("model,own", [
    ("deep_crossing", {"model.num_residual_units", "model.residual_hidden_dim"}),
    ("wide_deep", {"model.hidden_dims", "optimizer.wide.lr"}),
])
def test_each_model_has_a_search_space_of_its_own_keys_over_tune_aucs(model, own):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ctr.config import register_configs
    from tests.hydra_config import CONFIGS, compose

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"model={model}", f"hydra/sweeper=tune_{model}"],
                            return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "maximize" and sweeper.study_name == f"ctr_tune_{model}"
    regularisation = {"model.dropout", "model.batch_norm", "optimizer.dense_weight_decay"}
    assert set(sweeper.params) == {"optimizer.dense_lr", "optimizer.sparse_lr", "embedding.dim",
                                   "embedding.num_embeddings", *regularisation, *own}
    # every choice (and each end of a range) the search can draw is a valid override of that model's config
    parser = OverridesParser.create()
    spaces = {key: parser.parse_override(f"{key}={space}").value() for key, space in sweeper.params.items()}
    values = {key: space.list if hasattr(space, "list") else [space.start, space.end] for key, space in spaces.items()}
    for i in range(max(len(v) for v in values.values())):
        compose(f"model={model}", *(f"{key}={json.dumps(v[min(i, len(v) - 1)])}" for key, v in values.items()))

"""Default run directories: one per job, created exclusively; shared by a torchrun job's ranks."""

from pathlib import Path

import pytest

import ctr.config as config_module
from ctr.config import run_dir, run_name


@pytest.fixture(autouse=True)
def fresh_cache():
    run_dir.cache_clear()
    yield
    run_dir.cache_clear()


def test_two_jobs_started_in_the_same_second_get_different_run_directories(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert run_name() != run_name()
    first = run_dir(str(tmp_path))
    run_dir.cache_clear()
    second = run_dir(str(tmp_path))
    assert first != second and Path(first).is_dir() and Path(second).is_dir()


def test_a_run_directory_that_already_exists_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(config_module, "run_name", lambda: "12-00-00-abcdef")
    (tmp_path / "12-00-00-abcdef").mkdir()
    with pytest.raises(FileExistsError, match="12-00-00-abcdef already exists: it belongs to another job"):
        run_dir(str(tmp_path))


def test_the_ranks_and_restarts_of_a_torchrun_job_share_its_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "0123456789abcdef")
    first = run_dir(str(tmp_path))
    run_dir.cache_clear()  # another rank, or the job restarted
    assert run_dir(str(tmp_path)) == first == str(tmp_path / "torchrun-01234567")


def test_hydra_resolves_the_default_run_directory_once_and_creates_it(tmp_path, monkeypatch):
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    setup_globals()  # Hydra's own resolvers (`now`), as an app has them
    config_module.register_configs()
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "config.yaml")
    monkeypatch.chdir(tmp_path)
    first, second = cfg.hydra.run.dir, cfg.hydra.run.dir
    assert first == second and first.startswith("outputs/") and (tmp_path / first).is_dir()
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1

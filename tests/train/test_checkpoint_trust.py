"""Checkpoints are trusted only as far as they are verified: no code runs on load, every file
matches its recorded sha256, a resume picks a checkpoint of the same config, and a save
fails clearly when the ranks do not share the checkpoint directory."""

import json
import logging
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from ctr.data.reader import batches as batches_of
from ctr.parallel.process_group import INIT_METHOD_ENV, init_distributed, shutdown
from ctr.train.checkpoint import (
    COMPLETE, CheckpointError, Checkpointer, config_differences, extra_state, restore_rng, training_config,
)
from ctr.train.loop import train
from ctr.build import build_trainable
from ctr.train.schedule import build_scheduler
from tests.hydra_config import TINY, compose
from tests.multiprocess import run_ranks
from tests.train.tampering import MakesMarker, rehash


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """A TINY model on one gloo rank, with two checkpoints (steps 3 and 4) of it in `saved`."""
    scratch = tmp_path_factory.mktemp("one_rank")
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", INIT_METHOD_ENV)
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ[INIT_METHOD_ENV] = f"file://{scratch / 'rendezvous'}"
    env = init_distributed("gloo")
    try:
        cfg = compose(*TINY)
        built = build_trainable(cfg, env)
        scheduler = build_scheduler(built.optimizer, cfg.optimizer.sparse_schedule, cfg.optimizer.dense_schedule, 10)
        batches = (built.hashing(b) for b in batches_of(built.source, "train", 32, 0, 1, True))
        train(built.model, built.optimizer, batches, env, 3, 10, False, scheduler=scheduler)
        checkpointer = Checkpointer(scratch / "saved", 2, env.device, training_config(cfg))
        for step in (3, 4):
            checkpointer.save(step, built.model, built.optimizer, scheduler)
        yield cfg, env, built, scheduler, scratch / "saved"
    finally:
        shutdown()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _copy(saved: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "checkpoints"
    shutil.copytree(saved, directory)
    return directory


def _checkpointer(one_rank, directory: Path, **changes) -> Checkpointer:
    cfg, env = one_rank[0], one_rank[1]
    config = training_config(cfg)
    for dotted, value in changes.items():
        group, key = dotted.split("__")
        config[group][key] = value
    return Checkpointer(directory, 2, env.device, config)


def _load(one_rank, checkpointer: Checkpointer, path: Path) -> int:
    built, scheduler = one_rank[2], one_rank[3]
    return checkpointer.load(path, built.model, built.optimizer, scheduler)


def test_extra_state_loads_with_weights_only_and_restores_every_rng(one_rank, tmp_path):
    scheduler = one_rank[3]
    torch.manual_seed(7), np.random.seed(7), random.seed(7), np.random.standard_normal()
    torch.save(extra_state(5, scheduler, torch.device("cpu")), tmp_path / "extra.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    extra = torch.load(tmp_path / "extra.pt", weights_only=True)
    restore_rng(extra["rng"], torch.device("cpu"))
    assert extra["step"] == 5
    drawn = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1])
    assert drawn[2:] == expected[2:]


def test_cuda_rng_state_is_recorded_and_restored_for_a_rank_on_cuda(one_rank, tmp_path, monkeypatch):
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update(state=state, device=device))
    cuda = torch.device("cuda", 0)
    torch.save(extra_state(5, one_rank[3], cuda), tmp_path / "extra.pt")
    extra = torch.load(tmp_path / "extra.pt", weights_only=True)
    assert torch.equal(extra["rng"]["cuda"], cuda_state)
    restore_rng(extra["rng"], cuda)
    assert torch.equal(restored["state"], cuda_state) and restored["device"] == cuda
    assert "cuda" not in extra_state(5, one_rank[3], torch.device("cpu"))["rng"]


def test_a_crafted_extra_state_file_is_refused_without_running_its_code(one_rank, tmp_path):
    directory = _copy(one_rank[4], tmp_path)
    path = directory / "step_000000004"
    marker = tmp_path / "marker"
    torch.save({"step": MakesMarker(marker)}, path / "extra_rank0.pt")
    rehash(path)
    with pytest.raises(pickle.UnpicklingError):
        _load(one_rank, _checkpointer(one_rank, directory), path)
    assert not marker.exists()


def test_a_crafted_metadata_is_refused_without_running_its_code(one_rank, tmp_path):
    directory = _copy(one_rank[4], tmp_path)
    path = directory / "step_000000004"
    marker = tmp_path / "marker"
    metadata = pickle.loads((path / ".metadata").read_bytes())
    metadata.storage_meta.modules = [MakesMarker(marker)]  # otherwise valid: DCP alone would load it
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    rehash(path)
    with pytest.raises(pickle.UnpicklingError, match=r"\.metadata.*posix\.mkdir"):
        _load(one_rank, _checkpointer(one_rank, directory), path)
    assert not marker.exists()


def test_an_untouched_checkpoint_verifies_and_loads(one_rank, tmp_path):
    directory = _copy(one_rank[4], tmp_path)
    assert _load(one_rank, _checkpointer(one_rank, directory), directory / "step_000000004") == 4


@pytest.mark.parametrize("damage", ["overwrite 16 bytes of a shard", "truncate .metadata"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(one_rank, tmp_path, damage):
    directory = _copy(one_rank[4], tmp_path)
    path = directory / "step_000000004"
    if damage.startswith("overwrite"):
        damaged = path / "__0_0.distcp"
        with open(damaged, "r+b") as f:
            f.seek(damaged.stat().st_size // 2)  # inside the tensor data: DCP alone reads it silently
            f.write(np.full(4, 3.4e38, dtype=np.float32).tobytes())
    else:
        damaged = path / ".metadata"
        damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{damaged}: sha256 differs"):
        _load(one_rank, _checkpointer(one_rank, directory), path)


def test_resume_auto_falls_back_to_the_previous_complete_checkpoint_and_says_so(one_rank, tmp_path, caplog):
    directory = _copy(one_rank[4], tmp_path)
    newest = directory / "step_000000004" / "extra_rank0.pt"
    newest.write_bytes(newest.read_bytes()[:-1])
    checkpointer = _checkpointer(one_rank, directory)
    with caplog.at_level(logging.WARNING, logger="ctr.train.checkpoint"):
        assert checkpointer.resume_point("auto") == directory / "step_000000003"
    assert f"{newest}: sha256 differs" in caplog.text and "falling back" in caplog.text
    oldest = directory / "step_000000003" / ".metadata"
    oldest.write_bytes(oldest.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="no checkpoint .* passed verification"):
        _checkpointer(one_rank, directory).resume_point("auto")


def test_resume_auto_refuses_a_checkpoint_of_another_config_unless_the_keys_are_allowed(one_rank, tmp_path):
    directory = _copy(one_rank[4], tmp_path)
    changed = _checkpointer(one_rank, directory, trainer__epochs=3, model__residual_hidden_dim=8)
    with pytest.raises(CheckpointError, match=r"\['model.residual_hidden_dim', 'trainer.epochs'\]"):
        changed.resume_point("auto")
    assert changed.resume_point("auto", ["trainer.epochs", "model"]) == directory / "step_000000004"
    cosmetic = _checkpointer(one_rank, directory, trainer__progress_bar=True, checkpoint__resume="auto")
    assert cosmetic.resume_point("auto") == directory / "step_000000004"


def test_config_differences_names_nested_added_and_removed_keys():
    recorded = {"model": {"wide": {"features": ["a"]}, "dim": 4}, "trainer": {"max_steps": 5}}
    current = {"model": {"wide": {"features": ["b"]}, "extra": 1}, "trainer": {"max_steps": None}}
    assert config_differences(recorded, current) == ["model.dim", "model.extra", "model.wide.features"]
    assert config_differences(recorded, current, ["model.wide"]) == ["model.dim", "model.extra"]


def _save_into_rank_directories(scratch: str, shared: bool) -> None:
    """Each rank saves a tiny model; with `shared` false, each into a directory of its own."""
    env = init_distributed("gloo")
    try:
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = LambdaLR(optimizer, lambda step: 1.0)
        directory = Path(scratch) / ("shared" if shared else f"rank{env.rank}")
        checkpointer = Checkpointer(directory, 2, env.device, {})
        if shared:
            path = checkpointer.save(1, model, optimizer, scheduler)
            files = json.loads((path / COMPLETE).read_text())["files"]
            assert sorted(files) == [".metadata", "__0_0.distcp", "__1_0.distcp", "extra_rank0.pt", "extra_rank1.pt"]
            return
        expected = "filesystem every rank shares" if env.rank == 0 else "refused by another rank"
        with pytest.raises(CheckpointError, match=expected):
            checkpointer.save(1, model, optimizer, scheduler)
        assert not (directory / "step_000000001").exists()
    finally:
        shutdown()


@pytest.mark.parametrize("shared", [False, True], ids=["separate directories", "shared directory"])
def test_a_save_fails_clearly_when_ranks_do_not_share_the_checkpoint_directory(tmp_path, shared):
    run_ranks(_save_into_rank_directories, 2, str(tmp_path), shared)

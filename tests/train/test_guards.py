"""Guards: config values refused up front by key, an epoch without steps, and a non-finite loss
that stops training before any checkpoint or validation of its weights."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctr.data.preprocess import preprocess
from ctr.data.reader import train_steps_per_epoch
from ctr.data.shard_format import data_sha256, shard_file
from ctr.train.guards import ConfigValueError, NonFiniteLossError, check_config, check_finite_loss, check_steps
from tests.conftest import REPO
from tests.data.criteo_files import criteo_lines, write_criteo
from tests.hydra_config import TINY, TINY_MODEL, compose


@pytest.mark.parametrize("override,key", [
    ("trainer.batch_size=0", "trainer.batch_size=0"),
    ("embedding.num_embeddings=-1", "embedding.num_embeddings=-1"),
    ("trainer.epochs=0", "trainer.epochs=0"),
    ("trainer.log_every_steps=0", "trainer.log_every_steps=0"),
    ("checkpoint.every_steps=-5", "checkpoint.every_steps=-5"),
    ("+embedding.num_embeddings_per_feature.cat_0=0", "embedding.num_embeddings_per_feature.cat_0=0"),
])
def test_a_count_or_size_out_of_range_is_refused_naming_its_key(override, key):
    check_config(compose(*TINY))
    with pytest.raises(ConfigValueError, match=f"{key}: expected a positive integer"):
        check_config(compose(*TINY, override))


def test_max_steps_may_be_zero_to_evaluate_a_resumed_checkpoint_but_not_negative():
    check_config(compose(*TINY, "trainer.max_steps=0"))
    with pytest.raises(ConfigValueError, match=r"trainer.max_steps=-1: expected null or an integer >= 0"):
        check_config(compose(*TINY, "trainer.max_steps=-1"))


def _train(run_dir: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/train.py", *options, "distributed.nproc_per_node=1",
                           f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("option,message", [
    ("trainer.batch_size=0", "trainer.batch_size=0: expected a positive integer"),
    ("trainer.epochs=0", "trainer.epochs=0: expected a positive integer"),
    ("trainer.max_steps=0", "trainer.max_steps=0 trains nothing, and no checkpoint is resumed"),
])
def test_a_run_that_could_not_train_fails_at_start_up_and_saves_nothing(tmp_path, option, message):
    """These once ended in ZeroDivisionError, or in 0 steps and an untrained model saved as the best, exit 0."""
    proc = _train(tmp_path, *TINY, option)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


def test_an_epoch_without_a_step_is_refused_and_a_batch_larger_than_the_split_trains_its_partial_step():
    """The last partial step trains (issue 21), so only fewer train rows than ranks leave an epoch without a step."""
    check_steps(train_steps_per_epoch(640, 1000, 1), 640, 1000, 1, None, False)
    with pytest.raises(ConfigValueError, match="the train split's 3 rows cannot give each of 4 ranks a row"):
        check_steps(train_steps_per_epoch(3, 1000, 4), 3, 1000, 4, None, False)


def test_the_loss_check_names_the_first_bad_step_of_the_window():
    check_finite_loss(0.7, 10, [0.7] * 5)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 10 \(mean over all ranks of steps 6-10, "
                                                 r"on this rank first at step 8\)"):
        check_finite_loss(float("nan"), 10, [0.7, 0.7, float("inf"), float("nan"), 0.7])
    with pytest.raises(NonFiniteLossError, match=r"steps 6-10\); training stops"):  # another rank's loss
        check_finite_loss(float("inf"), 10, [0.7] * 5)


def test_a_nan_in_the_data_stops_training_at_the_next_check_keeping_the_good_checkpoint(tmp_path):
    """A nan input at step 7: the checkpoint at step 5 stays, none at step 10, no best, and the error names step 7."""
    path = write_criteo(tmp_path / "train.txt", criteo_lines(500, seed=9))
    shards = tmp_path / "shards"
    meta = preprocess(str(path), str(shards), progress_bar=False)
    column = shard_file(shards, 0, "I1")
    values = np.load(column)
    values[6 * 32 + 3] = np.nan  # a row of step 7 (batch 32, unshuffled)
    np.save(column, values)
    meta["shards"][0]["sha256"]["I1"] = data_sha256(values)
    (shards / "meta.json").write_text(json.dumps(meta))
    run_dir = tmp_path / "run"
    proc = _train(run_dir, "data=criteo", f"data.path={shards}", "data.shuffle_buffer=0", *TINY_MODEL,
                  "checkpoint.every_steps=5", "trainer.log_every_steps=50", "trainer.eval_every_steps=20")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "training loss is nan at step 10 (mean over all ranks of steps 6-10, on this rank first at step 7)" in output, output[-3000:]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_000000005"], checkpoints
    assert not (run_dir / "metrics.json").exists()

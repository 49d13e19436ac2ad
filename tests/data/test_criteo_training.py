"""Criteo end to end: TSV → shards → `launch/train.py data=criteo` on two ranks; and the real sample."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctr.data.preprocess import preprocess
from ctr.data.shards import ShardSource
from tests.conftest import REPO
from tests.data.criteo_files import SHARED_DATA, criteo_lines, write_criteo
from tests.hydra_config import ON_CPU, TINY_MODEL

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
KAGGLE_10K = SHARED_DATA / "criteo-kaggle-10k"


def test_train_on_preprocessed_criteo_with_two_ranks(tmp_path):
    path = write_criteo(tmp_path / "train.txt", criteo_lines(1000, seed=8))
    preprocess(str(path), str(tmp_path / "shards"), shard_rows=300, progress_bar=False)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "launch/train.py", "data=criteo",
         f"data.path={tmp_path / 'shards'}", "data.shuffle_buffer=256", *TINY_MODEL, *ON_CPU, f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # 12 full steps of 2 ranks x 32 rows, and the last 32 rows split 16 + 16.
    assert metrics["world_size"] == 2 and metrics["train_steps"] == 13
    assert 0.0 < metrics["test_auc"] < 1.0 and metrics["test_log_loss"] > 0.0
    plan = json.loads((run_dir / "plan.json").read_text())
    assert {row["table"] for row in plan["tables"]} == {f"t_C{i}" for i in range(1, 27)}


@pytest.mark.skipif(not KAGGLE_10K.is_dir(), reason=f"{KAGGLE_10K} is not present")
def test_the_real_kaggle_sample_preprocesses_as_its_source_describes(tmp_path):
    meta = preprocess(str(KAGGLE_10K), str(tmp_path / "out"), progress_bar=False)
    assert meta["num_rows"] == 10_000 and meta["bad_rows"]["total"] == 0
    assert meta["stats"]["label"]["positives"] == 2182  # SOURCE.md
    assert meta["stats"]["dense"]["I2"]["negative_clamped"] > 0  # "I2 holds values such as -1"
    first = ShardSource(str(tmp_path / "out"), shuffle_buffer=0).rows("train", 0, 1)
    assert first.ids[0, 0] == 7611814336352908041  # C1 = 68fd1e64, as in test_criteo
    assert first.dense[0, 3] == pytest.approx(np.log1p(0))  # I4 of line 1 is 0 (line: 0 1 1 5 0 1382 ...)
    assert first.dense[0, 4] == pytest.approx(np.log1p(1382))

"""benchmarks/logistic_baseline.py scores the split the data config gives training, and says which."""

import json
import subprocess
import sys

from tests.data.criteo_files import criteo_lines, write_criteo
from ctr.data.preprocess import preprocess
from tests.train.test_launch import REPO


def test_the_baseline_scores_the_day_split_training_uses_and_prints_its_sizes(tmp_path):
    for day, rows in enumerate((300, 120, 200)):
        write_criteo(tmp_path / "days" / f"day_{day}", criteo_lines(rows, seed=day))
    preprocess(str(tmp_path / "days"), str(tmp_path / "shards"), progress_bar=False)
    proc = subprocess.run(
        [sys.executable, "benchmarks/logistic_baseline.py", "data=criteo", f"data.path={tmp_path / 'shards'}",
         "data.split_by=day", "data.train_days=[0]", "data.val_days=[1]", "data.test_days=[2]",
         "data.batch_size=64", "embedding.num_embeddings=1000", "--epochs", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    labels = {day: sum(line.startswith("1") for line in criteo_lines(rows, seed=day))
              for day, rows in enumerate((300, 120, 200))}
    assert result["splits"] == {"train": {"rows": 300, "positives": labels[0]},
                                "val": {"rows": 120, "positives": labels[1]},
                                "test": {"rows": 200, "positives": labels[2]}}
    assert result["batch_size"] == 64 and 0.0 < result["logistic_regression_test_auc"] < 1.0

"""benchmarks/quality.py's arithmetic and tables: the AUC's standard error, the summary over
seeds, and the generated sections of RESULTS.md and README.md."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from quality import auc_standard_error, report, summarise  # noqa: E402


def test_the_standard_error_at_chance_is_the_mann_whitney_null_variance():
    # Hanley & McNeil at AUC 0.5 reduce to (n1 + n0 + 1) / (12 n1 n0), the U statistic's variance under H0.
    positives, negatives = 1000, 3000
    expected = math.sqrt((positives + negatives + 1) / (12 * positives * negatives))
    assert auc_standard_error(0.5, positives, negatives) == pytest.approx(expected, rel=1e-3)
    assert auc_standard_error(0.9, positives, negatives) < auc_standard_error(0.7, positives, negatives)
    assert auc_standard_error(0.7, 4 * positives, 4 * negatives) == pytest.approx(
        auc_standard_error(0.7, positives, negatives) / 2, rel=0.01)


def _run(model: str, seed: int, auc: float, variant: str = "default") -> dict:
    return {"dataset": "movielens100k_temporal", "model": model, "variant": variant, "seed": seed, "test_auc": auc,
            "test_log_loss": 0.6, "best_val_auc": 0.72, "test_rows": 20000, "test_positives": 10000,
            "train_steps": 846, "test_weights_step": 282, "train_seconds": 30.0}


def test_the_summary_is_mean_and_sample_deviation_over_seeds_with_the_distance_to_the_target(tmp_path):
    runs = [_run("deep_crossing", s, auc) for s, auc in enumerate((0.69, 0.70, 0.71))]
    runs.append({**_run("logistic_regression", 0, 0.68), "best_val_auc": None})
    (row, floor) = sorted(summarise(runs), key=lambda r: r["model"])
    assert row["test_auc_mean"] == pytest.approx(0.70) and row["test_auc_std"] == pytest.approx(0.01)
    assert row["target"] == 0.697 and row["target_gap"] == pytest.approx(0.003)
    assert row["auc_standard_error"] == pytest.approx(auc_standard_error(0.70, 10000, 10000))
    assert floor["seeds"] == [0] and floor["test_auc_std"] == 0.0

    store = tmp_path / "quality.json"
    store.write_text(json.dumps({"machine": {"cpu": "cpu", "cores": 2}, "seeds": [0, 1, 2], "date": "today",
                                 "command": "quality.py", "runs": runs, "summary": summarise(runs)}))
    results, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- quality:begin -->\nold\n<!-- quality:end -->\n\nafter\n")
    report(store, results, readme)
    assert "| movielens100k_temporal | Deep Crossing | default | 0.7000 ± 0.0100 |" in results.read_text()
    text = readme.read_text()
    assert "old" not in text and text.endswith("after\n")
    assert "| movielens100k_temporal (20,000) | 0.7000 ± 0.0100 (SE 0.0037) | – | 0.6800 | 0.697 / 0.697 |" in text

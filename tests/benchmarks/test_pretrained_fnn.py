"""benchmarks/pretrained_fnn.py: the steps to reach a target validation AUC, and its table of means."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from pretrained_fnn import pretrained_tables, steps_to_reach, table  # noqa: E402


def test_steps_to_reach_is_the_first_validation_at_or_above_the_target():
    history = [[10, 0.60], [20, 0.71], [30, 0.70], [40, 0.72]]
    assert steps_to_reach(history, 0.70) == 20
    assert steps_to_reach(history, 0.72) == 40
    assert steps_to_reach(history, 0.73) is None


def _run(test_auc: float, steps=None) -> dict:
    return {"test_auc": test_auc, "best_val_auc": test_auc + 0.01, "train_steps": 100,
            "steps_to_random_best_val_auc": steps}


def test_the_table_gives_means_over_seeds_and_counts_runs_that_never_reach_the_target():
    seeds = {s: {"fm": _run(0.70), "random": _run(0.75 + s / 100, 80), "fm_init": _run(0.76, 60 if s else None),
                 "fm_frozen": _run(0.74)} for s in (0, 1, 2)}
    rows = table({"movielens": seeds}).splitlines()
    assert rows[3] == "| movielens | Deep Crossing, random | 0.7600 ± 0.0100 | 0.7700 ± 0.0100 | 80 ± 0 | 100 ± 0 |"
    assert "| 60 ± 0 (1 never) |" in rows[4]
    assert "| never |" in rows[5]


def test_the_fm_runs_tables_are_named_as_embedding_init_takes_them_without_the_first_order_ones(tmp_path):
    plan = {"tables": [{"table": "t_movie"}, {"table": "wide_t_movie"}, {"table": "t_genre"}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert pretrained_tables(tmp_path) == ["movie", "genre"]

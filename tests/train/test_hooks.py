"""End-of-run hooks: the last checkpoint and validation run exactly when the loop did not run them."""

from typing import List

import pytest

from ctr.train.loop import Hooks, TrainResult


def _hooks(saved: List[int], validated: List[int]) -> Hooks:
    return Hooks(eval_every_steps=10, on_eval=lambda step: validated.append(step) or False,
                 checkpoint_every_steps=10, on_checkpoint=saved.append)


@pytest.mark.parametrize(
    "steps, stopped_early, start_step, expect_saved, expect_validated",
    [
        (20, False, 0, [], []),          # the loop saved and validated after step 20 itself
        (25, False, 0, [25], [25]),      # the last steps are not due: both run once more
        (20, True, 0, [20], []),         # an early stop at a due step left before its checkpoint
        (25, True, 0, [25], []),         # early stop: no second validation of the same weights
        (10, False, 10, [], []),         # resumed at step 10, trained nothing: nothing to save
    ],
)
def test_finish_runs_what_the_loop_left_undone(steps, stopped_early, start_step, expect_saved, expect_validated):
    saved, validated = [], []
    _hooks(saved, validated).finish(TrainResult(steps=steps, stopped_early=stopped_early), start_step)
    assert saved == expect_saved
    assert validated == expect_validated

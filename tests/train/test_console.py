"""Library warnings known to be harmless are silenced on every run; every other warning is kept."""

import subprocess
import sys
import warnings

from ctr.train.console import quiet_library_noise
from tests.hydra_config import TINY
from tests.train.test_launch import REPO

INDEXING = "Using a non-tuple sequence for multidimensional indexing is deprecated"


def _shown(message: str, module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_library_noise()
        warnings.warn_explicit(message, UserWarning, "file.py", 1, module=module)
    return bool(caught)


def test_known_library_warnings_are_silenced_and_others_kept():
    assert not _shown(INDEXING, "torchmetrics.utilities.distributed")
    assert not _shown("torch.distributed is disabled, unavailable or uninitialized, assuming ...",
                      "torch.distributed.checkpoint.utils")
    assert _shown(INDEXING, "ctr.data.reader")  # the same words from elsewhere are not torchmetrics' trim
    assert _shown("something else", "torchmetrics.utilities.distributed")


def test_a_default_tiny_job_with_uneven_splits_prints_no_library_warning(tmp_path):
    # 2 ranks, 259 val and 515 test rows (3 trailing rows each): the ranks hold different numbers of predictions.
    options = [o for o in TINY if not o.startswith(("data.val_rows", "data.test_rows"))]
    proc = subprocess.run(
        [sys.executable, "launch/train.py", *options, "data.val_rows=259", "data.test_rows=515",
         "trainer.eval_every=epoch", "distributed.nproc_per_node=2", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "validation AUC" in output and "test AUC" in output
    assert "Warning" not in output and "is_fx_tracing" not in output, output[-3000:]

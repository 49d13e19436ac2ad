"""Preprocessing: bounded memory, atomic and resumable output, and the statistics in meta.json."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ctr.data.parallel_preprocess import PARTS_DIR
from ctr.data.preprocess import preprocess
from ctr.data.shard_format import InvalidShardDirectory, read_meta
from ctr.data.shard_writer import PROGRESS_FILE
from ctr.data.shards import ShardSource
from tests.conftest import REPO
from tests.data.criteo_files import criteo_lines, write_criteo

# VmHWM, not ru_maxrss: a forked child's ru_maxrss starts at its parent's (pytest's) peak.
_CHILD = """
import json, sys
from ctr.data.preprocess import preprocess
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))
before = status_mb("VmRSS")
preprocess(sys.argv[1], sys.argv[2], shard_rows=int(sys.argv[3]), chunk_rows=2048, progress_bar=False)
print(json.dumps({"before_mb": before, "peak_mb": status_mb("VmHWM")}))
"""


def _child(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_memory_stays_bounded_on_an_input_much_larger_than_it(tmp_path):
    """A ~120 MB input through a process whose memory may grow by at most 40 MB."""
    block = "".join(criteo_lines(4000, seed=3))
    path = tmp_path / "train.txt"
    with open(path, "w") as f:
        for _ in range(120 * 2**20 // len(block) + 1):
            f.write(block)
    input_mb = path.stat().st_size / 2**20
    proc = _child(str(path), str(tmp_path / "out"), "8192")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    memory = json.loads(stdout)
    growth = memory["peak_mb"] - memory["before_mb"]
    assert input_mb > 3 * 40
    assert growth < 40, f"memory grew by {growth:.0f} MB on a {input_mb:.0f} MB input"
    assert read_meta(tmp_path / "out")["num_rows"] == sum(1 for _ in open(path))


def test_a_run_killed_midway_leaves_no_valid_directory_and_resumes_to_the_same_shards(tmp_path):
    path = write_criteo(tmp_path / "train.txt", criteo_lines(30_000, seed=4))
    out = tmp_path / "out"
    proc = _child(str(path), str(out), "1000")
    deadline = time.monotonic() + 60
    progress = out / PARTS_DIR / "00000" / PROGRESS_FILE
    # Part 0's shard 1 first column exists only once shard 0 is recorded in the part's progress file.
    while not (out / PARTS_DIR / "00000" / "00001.label.npy").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert progress.exists() and not (out / "meta.json").exists(), "the kill came too late to test"
    with pytest.raises(InvalidShardDirectory, match="no meta.json.*unfinished"):
        ShardSource(str(out))

    resumed = preprocess(str(path), str(out), shard_rows=1000, progress_bar=False)
    clean = preprocess(str(path), str(tmp_path / "clean"), shard_rows=1000, progress_bar=False)
    assert resumed["last_run"]["rows"] < 30_000
    for key in ("num_rows", "shards", "shard_positives", "stats", "bad_rows"):
        assert resumed[key] == clean[key]
    assert not (out / PARTS_DIR).exists() and not (out / PROGRESS_FILE).exists() and not list(out.glob("*.tmp"))
    source = ShardSource(str(out))  # checksums verified as each shard is read
    assert sum(len(source.rows(split, 0, source.num_rows(split))) for split in ("train", "val", "test")) == 30_000


def test_a_finished_directory_is_kept_and_another_input_is_refused(tmp_path):
    path = write_criteo(tmp_path / "a.txt", criteo_lines(50))
    first = preprocess(str(path), str(tmp_path / "out"), progress_bar=False)
    assert preprocess(str(path), str(tmp_path / "out"), progress_bar=False) == first
    other = write_criteo(tmp_path / "b.txt", criteo_lines(60))
    with pytest.raises(FileExistsError, match="another input or configuration; pass overwrite=true"):
        preprocess(str(other), str(tmp_path / "out"), progress_bar=False)
    assert preprocess(str(other), str(tmp_path / "out"), overwrite=True, progress_bar=False)["num_rows"] == 60
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        preprocess(str(path), str(tmp_path / "notes"), progress_bar=False)


def test_meta_records_schema_counts_statistics_and_checksums(tmp_path):
    lines = criteo_lines(3000, seed=5)
    path = write_criteo(tmp_path / "train.txt", lines)
    meta = preprocess(str(path), str(tmp_path / "out"), shard_rows=1024, sparse_columns=["C1", "C2"],
                      progress_bar=False)
    assert meta["columns"] == ["label", *[f"I{i}" for i in range(1, 14)], "C1", "C2"]
    assert [s["rows"] for s in meta["shards"]] == [1024, 1024, 952] and meta["num_rows"] == 3000
    fields = [line.rstrip("\n").split("\t") for line in lines]
    assert meta["stats"]["label"]["positives"] == sum(f[0] == "1" for f in fields)
    exact = {f[14] for f in fields if f[14]}
    c1 = meta["stats"]["sparse"]["C1"]
    assert abs(c1["distinct_estimate"] - (len(exact) + 1)) <= 0.05 * len(exact) + 2  # + the "empty" id
    assert c1["missing"] == sum(not f[14] for f in fields)
    counts = {}
    for f in fields:
        counts[f[14]] = counts.get(f[14], 0) + 1
    true_top = max(counts.values())
    assert true_top - meta["stats"]["top_ids_count_error_at_most"] <= c1["top_ids"][0]["count_at_least"] <= true_top
    assert meta["stats"]["dense"]["I2"]["negative_clamped"] == sum(f[2].startswith("-") for f in fields)
    assert set(meta["shards"][0]["sha256"]) == set(meta["columns"])
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == {k: v for k, v in meta.items()}
    stored = np.concatenate([np.load(tmp_path / "out" / f"{s['index']:05d}.label.npy") for s in meta["shards"]])
    assert stored.tolist() == [float(f[0]) for f in fields]


def test_preprocess_command_line(tmp_path):
    path = write_criteo(tmp_path / "in" / "day_0", criteo_lines(100))
    proc = subprocess.run(
        [sys.executable, "launch/preprocess.py", f"input={path.parent}", f"output={tmp_path / 'out'}",
         "on_bad_row=skip", "progress_bar=false", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_meta(tmp_path / "out")["shards"][0]["day"] == 0
    bad = subprocess.run(
        [sys.executable, "launch/preprocess.py", f"input={path}", f"output={tmp_path / 'out2'}", "on_bad_rows=skip",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert bad.returncode != 0 and "on_bad_rows" in bad.stderr

"""Preprocessing by many workers: the same bytes for any number of workers or ranks, resume
after a killed worker, and per-worker memory independent of the input size."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctr.data import parallel_preprocess
from ctr.data.criteo import CriteoFormatError
from ctr.data.parallel_preprocess import PARTS_DIR
from ctr.data.preprocess import preprocess
from ctr.data.shard_format import shard_file
from ctr.data.shards import ShardSource
from tests.conftest import REPO
from tests.data.criteo_files import criteo_lines, write_criteo

# Small parts and shards, so that each file is cut into several parts of several shards.
_SMALL = {"shard_rows": 300, "chunk_rows": 128, "part_bytes": 40_000, "progress_bar": False}


def _inputs(directory: Path) -> Path:
    """Two plain files (one with bad lines deep inside, where its line numbers must still be right) and a gzip."""
    lines = criteo_lines(1500, seed=1)
    lines[1203] = "2\tbad label\n"
    lines[1400] = "1\t1\t2\n"
    write_criteo(directory / "a.txt", lines)
    write_criteo(directory / "b.txt.gz", criteo_lines(700, seed=2, first_index=1500))
    write_criteo(directory / "c.txt", criteo_lines(900, seed=3, first_index=2200))
    return directory


def _contents(out: Path) -> dict:
    """Every file's bytes, meta.json without this run's timings."""
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "meta.json"}
    meta = json.loads((out / "meta.json").read_text())
    meta.pop("last_run")
    return {"files": files, "meta": meta}


def test_shards_and_meta_are_byte_identical_for_1_2_and_3_workers(tmp_path):
    data = _inputs(tmp_path / "in")
    runs = {n: preprocess(str(data), str(tmp_path / f"w{n}"), on_bad_row="skip", workers=n, **_SMALL) for n in (1, 2, 3)}
    assert runs[1]["last_run"]["parts"] > 6 and len(runs[1]["shards"]) > runs[1]["last_run"]["parts"]
    one = _contents(tmp_path / "w1")
    assert _contents(tmp_path / "w2") == one and _contents(tmp_path / "w3") == one
    meta = runs[1]
    assert meta["num_rows"] == 1500 + 700 + 900 - 2 and meta["bad_rows"]["total"] == 2
    assert [e.split(":")[1] for e in meta["bad_rows"]["examples"]] == ["1204", "1401"]
    rows = ShardSource(str(tmp_path / "w1"), train_ratio=1.0, val_ratio=0.0, shuffle_buffer=0,
                       verify_checksums=True).rows("train", 0, meta["num_rows"])
    # I1 holds each line's index: every line, once, in file order (log1p of the index).
    expected = [i for i in range(3100) if i not in (1203, 1400)]
    assert (rows.dense[:, 0] == np.log1p(expected).astype("float32")).all()
    # Each part's shard positives, renumbered with its shards, so split counts read no shard.
    labels = [np.load(shard_file(tmp_path / "w1", s["index"], "label")).sum() for s in meta["shards"]]
    assert meta["shard_positives"] == labels and sum(labels) == meta["stats"]["label"]["positives"]
    assert ShardSource(str(tmp_path / "w3")).split_counts() == ShardSource(str(tmp_path / "w1")).split_counts()


def test_a_truncated_gzip_read_by_a_worker_is_refused_naming_its_last_line(tmp_path):
    data = tmp_path / "in"
    write_criteo(data / "a.txt", criteo_lines(1500, seed=1))
    gz = write_criteo(data / "b.txt.gz", criteo_lines(700, seed=2, first_index=1500))
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    for policy in ("error", "skip"):
        with pytest.raises(Exception, match=f"{gz}: truncated or corrupt gzip stream .* after line \\d+; "
                                            "the rest of the file cannot be read or counted"):
            preprocess(str(data), str(tmp_path / policy), on_bad_row=policy, workers=2, **_SMALL)
        assert not (tmp_path / policy / "meta.json").exists()


def test_overwrite_removes_what_an_interrupted_parallel_run_wrote_and_nothing_else(tmp_path, monkeypatch):
    data = _inputs(tmp_path / "in")
    stopped = tmp_path / "stopped"
    with pytest.raises(CriteoFormatError, match="a.txt:1204"):  # parts before the bad line's are done
        preprocess(str(data), str(stopped), **_SMALL)
    assert list(stopped.glob(f"{PARTS_DIR}/*/done.json")) and list(stopped.glob(f"{PARTS_DIR}/*/*.npy"))
    (stopped / PARTS_DIR / "00000" / "mine.npy").write_bytes(b"not ctr's")
    with pytest.raises(FileExistsError, match=f"not empty and holds no shards of ctr's \\(it holds {PARTS_DIR}\\)"):
        preprocess(str(data / "c.txt"), str(stopped), overwrite=True, **_SMALL)
    assert sorted(str(p.relative_to(stopped)) for p in stopped.rglob("*")) == [
        PARTS_DIR, f"{PARTS_DIR}/00000", f"{PARTS_DIR}/00000/mine.npy"]
    (stopped / PARTS_DIR / "00000" / "mine.npy").unlink()
    preprocess(str(data / "c.txt"), str(stopped), overwrite=True, **_SMALL)
    preprocess(str(data / "c.txt"), str(tmp_path / "clean"), **_SMALL)
    assert _contents(stopped) == _contents(tmp_path / "clean")

    # A merge interrupted after moving the parts' shards into the directory, before meta.json.
    merged = tmp_path / "merged"
    monkeypatch.setattr(parallel_preprocess, "write_meta", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        preprocess(str(data), str(merged), on_bad_row="skip", **_SMALL)
    monkeypatch.undo()
    assert len(list(merged.glob("*.label.npy"))) > len(_contents(tmp_path / "clean")["meta"]["shards"])
    preprocess(str(data / "c.txt"), str(merged), overwrite=True, **_SMALL)
    assert _contents(merged) == _contents(tmp_path / "clean")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_torchrun_ranks_write_the_same_shards_as_one_process(tmp_path):
    data = _inputs(tmp_path / "in")
    preprocess(str(data), str(tmp_path / "one"), on_bad_row="skip", **_SMALL)
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "launch/preprocess.py", f"input={data}",
         f"output={tmp_path / 'ranks'}", "on_bad_row=skip", "shard_rows=300", "chunk_rows=128", "part_bytes=40000",
         "progress_bar=false", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _contents(tmp_path / "ranks") == _contents(tmp_path / "one")


def _spawned_workers(pid: int) -> list:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def kill_a_worker_midway(command: list, out: Path, started: str) -> None:
    """Runs `command`, a job whose spawned workers write into `out`; kills one worker (SIGKILL) once a file
    matching `started` exists there, and checks that the job then failed without writing meta.json."""
    proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(started)) and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _spawned_workers(proc.pid)
    assert workers, "no worker to kill"
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (out / "meta.json").exists(), "the kill came too late to test"
    assert "signal" in stderr.lower() or "SIGKILL" in stderr


_RUN = "import sys; from ctr.data.preprocess import preprocess; " \
       "preprocess(sys.argv[1], sys.argv[2], shard_rows=1000, chunk_rows=500, part_bytes=1_000_000, " \
       "workers=2, progress_bar=False)"


def test_a_killed_worker_fails_the_run_which_resumes_per_part_with_other_worker_counts(tmp_path):
    path = write_criteo(tmp_path / "train.txt", criteo_lines(40_000, seed=4))
    out = tmp_path / "out"
    # A part's shard 1 exists only once its shard 0 is recorded (the progress record comes before any shard).
    kill_a_worker_midway([sys.executable, "-c", _RUN, str(path), str(out)], out, f"{PARTS_DIR}/*/00001.label.npy")

    settings = {"shard_rows": 1000, "chunk_rows": 500, "part_bytes": 1_000_000, "progress_bar": False}
    resumed = preprocess(str(path), str(out), workers=3, **settings)
    clean = preprocess(str(path), str(tmp_path / "clean"), **settings)
    assert resumed["last_run"]["rows"] < 40_000
    assert _contents(out) == _contents(tmp_path / "clean")
    assert clean["num_rows"] == 40_000 and not (out / PARTS_DIR).exists()


@pytest.mark.parametrize("workers", [2])
def test_a_workers_peak_memory_does_not_grow_with_the_input(tmp_path, workers):
    """Inputs of ~20 and ~80 shards: how far each worker's RSS rises (measured in the worker) stays the same."""
    settings = {"shard_rows": 2000, "chunk_rows": 1000, "part_bytes": 2_000_000, "progress_bar": False}
    block = criteo_lines(10_000, seed=5)
    peaks = {}
    for copies in (4, 16):
        path = write_criteo(tmp_path / f"in{copies}" / "train.txt", block * copies)
        meta = preprocess(str(path.parent), str(tmp_path / f"out{copies}"), workers=workers, **settings)
        assert len(meta["shards"]) >= 20 * copies // 4
        peaks[copies] = meta["last_run"]["peak_rss_growth_bytes_per_worker"] / 2**20
    # The bound: one shard being filled and one block being parsed, a few MB here, plus the allocator's slack.
    assert max(peaks.values()) < 30 and abs(peaks[16] - peaks[4]) < 10, f"a worker's memory rose by {peaks} MB"

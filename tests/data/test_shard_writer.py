"""The shard writer: a source that supplies only blocks of rows and its own statistics gets
shards per split, the common meta.json merged with its own keys, and a finished directory
left alone (written by `write_parts`, one part here)."""

import json
from pathlib import Path

import numpy as np
import pytest

from ctr.data.parallel_preprocess import PartedInput, write_parts
from ctr.data.shard_writer import PARTS_DIR, PARTS_FINGERPRINT, PROGRESS_FILE, BadRowPolicy, Block, input_fingerprint
from ctr.data.shards import ShardSource

_PART = Path(PARTS_DIR) / "00000"


def _block(split: str, first: int, stop: int, closes_split: bool = False) -> Block:
    x = np.arange(first, stop, dtype=np.float32)
    columns = {"label": (x % 2).astype(np.float32), "x": x, "id": np.arange(first, stop, dtype=np.int64) % 3}
    return Block(columns, missing=np.array([0, stop - first]), dense_sum=x.sum(0, dtype=np.float64)[None],
                 split=split, closes_split=closes_split)


class _Toy(PartedInput):
    """Seven rows of one file, in one part: train rows 0..2, test rows 3..6."""

    name = "toy"
    splits = ("train", "test")
    dense, sparse, columns = ["x"], ["id"], ["label", "x", "id"]

    def __init__(self, path: Path, policy, shard_rows: int, chunk_rows: int) -> None:
        self.input = self.description = str(path)
        self.inputs = [path]
        self.settings = {"on_bad_row": policy, "shard_rows": shard_rows}

    def files(self, state, room):
        yield "rows.txt", None, iter([_block("train", 0, 3), _block("test", 3, 5),
                                      _block("train", 5, 5, closes_split=True), _block("test", 5, 7, closes_split=True)])

    def meta(self, state) -> dict:
        return {"stats": {"dense": {"x": {"max": 9.0}}}, "toy_rows": state.rows}

    def parts(self):
        return [0]

    def for_part(self, index: int) -> "_Toy":
        return self

    def merged_position(self, positions) -> dict:
        return {}


def _unfinished(out: Path, toy: _Toy, scalars: dict) -> Path:
    """A run's directory left with `scalars` as its one part's progress record; returns the part's directory."""
    fingerprint = input_fingerprint(toy.inputs, toy.settings)
    (out / _PART).mkdir(parents=True)
    (out / PARTS_DIR / PARTS_FINGERPRINT).write_text(fingerprint)
    np.savez(out / _PART / PROGRESS_FILE, fingerprint=fingerprint, scalars=json.dumps(scalars))
    return out / _PART


def test_a_source_of_blocks_gets_shards_per_split_and_the_common_meta(tmp_path):
    (tmp_path / "rows.txt").write_text("seven rows\n")
    meta = write_parts(lambda *settings: _Toy(tmp_path / "rows.txt", *settings), str(tmp_path / "out"), shard_rows=4,
                        progress_bar=False)
    # The train rest is written when its closing block arrives, before test's closing block fills a shard.
    assert [(s["split"], s["rows"]) for s in meta["shards"]] == [("train", 3), ("test", 4)]
    assert meta["source"] == "toy" and meta["num_rows"] == 7 and meta["toy_rows"] == 7
    assert meta["stats"]["dense"]["x"] == {"missing": 0, "mean": 3.0, "max": 9.0}
    assert meta["stats"]["sparse"]["id"]["missing"] == 7 and meta["settings"]["on_bad_row"] == "error"
    source = ShardSource(str(tmp_path / "out"), split_by="preprocessed", shuffle_buffer=0)
    assert source.rows("train", 0, 3).dense[:, 0].tolist() == [0, 1, 2]
    assert source.rows("test", 0, 4).dense[:, 0].tolist() == [3, 4, 5, 6]
    # The same input again: the stored meta (its last_run included) comes back, nothing is rewritten.
    again = write_parts(lambda *settings: _Toy(tmp_path / "rows.txt", *settings), str(tmp_path / "out"),
                         shard_rows=4, progress_bar=False)
    assert again == meta


@pytest.mark.parametrize("settings,problem", [({"on_bad_row": "drop"}, "drop"), ({"shard_rows": 0}, "shard_rows=0")])
def test_the_pass_settings_are_checked_before_the_source_opens(tmp_path, settings, problem):
    with pytest.raises(ValueError, match=problem):
        write_parts(lambda *_: pytest.fail("the source was opened"), str(tmp_path / "out"), **settings)


class _ResumableToy(_Toy):
    resumable = True


def test_progress_saved_in_another_layout_is_refused_not_misread(tmp_path):
    """An older ctr saved its Criteo position as top-level scalars; resuming from it would re-read the input."""
    path, out = tmp_path / "rows.txt", tmp_path / "out"
    path.write_text("seven rows\n")
    old = {"file_index": 1, "offset": 0, "line": 1, "rows": 3, "shards": [], "bad": {}, "examples": [],
           "positives": 1, "missing": [0, 0], "negative": [0], "raw_max": [0], "dense_sum": [3.0]}
    _unfinished(out, _ResumableToy(path, BadRowPolicy.error, 4, 4), old)
    with pytest.raises(FileExistsError, match="another version of ctr; pass overwrite=true"):
        write_parts(lambda *settings: _ResumableToy(path, *settings), str(out), shard_rows=4, progress_bar=False)
    meta = write_parts(lambda *settings: _ResumableToy(path, *settings), str(out), shard_rows=4, overwrite=True,
                        progress_bar=False)
    assert meta["num_rows"] == 7


def test_overwrite_removes_only_the_files_the_previous_run_listed(tmp_path):
    """overwrite=true once deleted every *.npy and *.tmp in the output, whoever wrote them."""
    path, out = tmp_path / "rows.txt", tmp_path / "out"
    path.write_text("seven rows\n")
    write_parts(lambda *settings: _Toy(path, *settings), str(out), shard_rows=4, progress_bar=False)
    theirs = [out / "embeddings.npy", out / "notes.tmp", out / "00009.label.npy", out / "00000.other.npy"]
    for file in theirs:
        file.write_bytes(b"not ctr's")
    with pytest.raises(FileExistsError, match="not empty and holds no shards of ctr's .*00000.other.npy"):
        write_parts(lambda *settings: _Toy(path, *settings), str(out), shard_rows=2, overwrite=True,
                     progress_bar=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in theirs)
    assert all(file.read_bytes() == b"not ctr's" for file in theirs)


def test_overwrite_after_an_interrupted_first_shard_removes_its_files(tmp_path):
    """The progress record is saved before the first shard, so a shard written in part is known as ctr's."""
    path, out = tmp_path / "rows.txt", tmp_path / "out"
    path.write_text("seven rows\n")

    class _Interrupted(_ResumableToy):
        def files(self, state, room):
            for name in self.columns[:2]:
                (out / _PART / f"00000.{name}.npy").write_bytes(b"half a shard")
            (out / _PART / f"00000.{self.columns[2]}.npy.tmp").write_bytes(b"half a column")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_parts(lambda *settings: _Interrupted(path, *settings), str(out), shard_rows=4, progress_bar=False)
    (out / "mine.txt").write_text("kept")
    with pytest.raises(FileExistsError, match="holds no shards of ctr's \\(it holds mine.txt\\)"):
        write_parts(lambda *settings: _Toy(path, *settings), str(out), shard_rows=2, overwrite=True,
                     progress_bar=False)
    (out / "mine.txt").unlink()
    assert write_parts(lambda *settings: _Toy(path, *settings), str(out), shard_rows=2, overwrite=True,
                        progress_bar=False)["num_rows"] == 7


def test_a_source_that_starts_over_removes_the_unfinished_runs_shards(tmp_path):
    """A non-resumable source rewrites from shard 0: the old run's later shards must not linger, unlisted."""
    path, out = tmp_path / "rows.txt", tmp_path / "out"
    path.write_text("seven rows\n")
    toy = _Toy(path, BadRowPolicy.error, 4, 4)
    listed = [{"index": i, "rows": 4, "file": "rows.txt", "day": None, "sha256": {c: "" for c in toy.columns}}
              for i in range(4)]
    old = {"source": {}, "rows": 16, "shards": listed, "bad": {}, "examples": [], "positives": 8,
           "missing": [0, 0], "dense_sum": [0.0]}
    part = _unfinished(out, toy, old)
    for shard in listed:
        for column in toy.columns:
            (part / f"{shard['index']:05d}.{column}.npy").write_bytes(b"old")
    meta = write_parts(lambda *settings: _Toy(path, *settings), str(out), shard_rows=4, progress_bar=False)
    assert len(meta["shards"]) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["meta.json"] + [f"0000{i}.{c}.npy" for i in range(2) for c in toy.columns])

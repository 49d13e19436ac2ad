"""Criteo TSV: ids, value transforms, and every kind of bad input, under both policies."""

import gzip
import json

import numpy as np
import pytest

from ctr.data.criteo import CriteoFormatError, categorical_ids, discover, parse_lines
from ctr.data.preprocess import preprocess
from tests.data.criteo_files import criteo_lines, write_criteo

MASK64 = (1 << 64) - 1


def _reference_splitmix64(x: int) -> int:
    """Steele et al.'s splitmix64, written out in plain Python as an independent reference."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def test_a_fixed_value_hashes_to_a_fixed_id():
    # C1 = 68fd1e64 is the first categorical value of Kaggle train.txt's first line.
    ids, empty = categorical_ids(np.array([[b"68fd1e64", b"", b"68FD1E64"]]))
    assert ids[0, 0] == 7611814336352908041
    assert ids[0, 0] == _reference_splitmix64((1 << 33) | 0x68FD1E64) >> 1
    assert ids[0, 1] == _reference_splitmix64((2 << 33) | (1 << 32)) >> 1
    assert ids[0, 2] == _reference_splitmix64((3 << 33) | 0x68FD1E64) >> 1  # same value, other feature
    assert empty.tolist() == [[False, True, False]]


def test_integers_missing_to_zero_negative_clamped_then_log1p():
    line = "\t".join(["1", "", "-3", "7"] + ["0"] * 10 + [""] * 26).encode() + b"\n"
    assert parse_lines([line], 1, log1p=True).dense[0, :3].tolist() == pytest.approx([0.0, 0.0, np.log1p(7)])
    parsed = parse_lines([line], 1, log1p=False)
    assert parsed.dense[0, :3].tolist() == [0.0, 0.0, 7.0]
    assert parsed.labels.tolist() == [1.0]
    assert parsed.negative[1] == 1 and parsed.missing[0] == 1


GOOD = criteo_lines(6, seed=1)
BAD_LINES = {
    "wrong field count": ("0\t1\t2\n", "3 fields, expected 40", "field count"),
    "non-numeric integer": ("0\tseven" + GOOD[0][GOOD[0].index("\t", 2):], "integer feature I1 is b'seven'", "integer"),
    "non-hex categorical": (GOOD[0].rsplit("\t", 1)[0] + "\tzzzzzzzz\n", "categorical feature C26 is b'zzzzzzzz'", "categorical"),
    "bad label": ("2" + GOOD[0][1:], "label b'2' is not 0 or 1", "label"),
    "blank line": ("\n", "blank line", "blank line"),
    "stray carriage return": (GOOD[0][:-1] + "\r\n", "stray carriage return", "carriage return"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_line_stops_the_run_naming_file_line_and_problem(tmp_path, case):
    bad, message, _ = BAD_LINES[case]
    path = write_criteo(tmp_path / "in" / "train.txt", GOOD[:3] + [bad] + GOOD[3:])
    with pytest.raises(CriteoFormatError, match=f"{path}:4: .*{message[:20]}"):
        preprocess(str(path), str(tmp_path / "out"), progress_bar=False)
    assert not (tmp_path / "out" / "meta.json").exists()


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_line_is_skipped_and_counted(tmp_path, case):
    bad, _, kind = BAD_LINES[case]
    path = write_criteo(tmp_path / "in" / "train.txt", GOOD[:3] + [bad] + GOOD[3:])
    meta = preprocess(str(path), str(tmp_path / "out"), on_bad_row="skip", progress_bar=False)
    assert meta["num_rows"] == len(GOOD)
    assert meta["bad_rows"]["total"] == 1 and meta["bad_rows"]["by_kind"] == {kind: 1}
    assert meta["bad_rows"]["examples"][0].startswith(f"{path}:4: ")
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["bad_rows"]["total"] == 1


def test_a_truncated_last_line(tmp_path):
    path = write_criteo(tmp_path / "train.txt", GOOD + [GOOD[0][:50]])
    with pytest.raises(CriteoFormatError, match=f"{path}:7: truncated last line"):
        preprocess(str(path), str(tmp_path / "out"), progress_bar=False)
    meta = preprocess(str(path), str(tmp_path / "skip"), on_bad_row="skip", progress_bar=False)
    assert (meta["num_rows"], meta["bad_rows"]["by_kind"]) == (len(GOOD), {"truncated last line": 1})


def test_a_last_line_without_newline_but_complete_is_kept(tmp_path):
    path = write_criteo(tmp_path / "train.txt", GOOD[:-1] + [GOOD[-1].rstrip("\n")])
    assert preprocess(str(path), str(tmp_path / "out"), progress_bar=False)["num_rows"] == len(GOOD)


def test_a_truncated_gzip_is_refused_under_either_policy_naming_the_last_line_read(tmp_path):
    """The rows past the break cannot be counted, so skipping would under-report them (1 bad row for 162 lost)."""
    lines = criteo_lines(2000, seed=2)
    data = gzip.compress("".join(lines).encode())
    path = tmp_path / "day_0.gz"
    path.write_bytes(data[: len(data) // 2])
    for policy in ("error", "skip"):
        with pytest.raises(CriteoFormatError, match=f"{path}: truncated or corrupt gzip stream .* after line \\d+; "
                                                    "the rest of the file cannot be read or counted"):
            preprocess(str(path), str(tmp_path / policy), on_bad_row=policy, progress_bar=False)
        assert not (tmp_path / policy / "meta.json").exists()


def test_a_file_named_gz_that_is_not_gzip_is_not_called_empty(tmp_path):
    path = write_criteo(tmp_path / "day_0.gz", GOOD, compress=False)
    with pytest.raises(CriteoFormatError, match=f"{path}: truncated or corrupt gzip stream .*Not a gzipped file"):
        preprocess(str(path), str(tmp_path / "out"), progress_bar=False)


def test_a_huge_bad_row_is_quoted_capped_in_errors_and_meta(tmp_path):
    huge = "1\t" + "9" * 2_000_000 + "\t" * 38 + "\n"
    path = write_criteo(tmp_path / "train.txt", GOOD + [huge])
    with pytest.raises(CriteoFormatError, match="characters in all") as error:
        preprocess(str(path), str(tmp_path / "out"), progress_bar=False)
    assert len(str(error.value)) < 2000
    meta = preprocess(str(path), str(tmp_path / "skip"), on_bad_row="skip", progress_bar=False)
    assert meta["bad_rows"]["total"] == 1 and (tmp_path / "skip" / "meta.json").stat().st_size < 100_000


def test_missing_and_empty_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(CriteoFormatError, match="does not exist"):
        preprocess(str(tmp_path / "nope.txt"), str(tmp_path / "out"), progress_bar=False)
    empty = write_criteo(tmp_path / "empty" / "train.txt", [])
    with pytest.raises(CriteoFormatError, match=f"{empty} is empty"):
        preprocess(str(empty.parent), str(tmp_path / "out"), progress_bar=False)
    empty_gz = write_criteo(tmp_path / "gz" / "day_0.gz", [])
    with pytest.raises(CriteoFormatError, match="is empty"):
        preprocess(str(empty_gz), str(tmp_path / "out"), progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_mixed_schemas_and_layouts_fail_before_any_work(tmp_path):
    write_criteo(tmp_path / "mixed" / "a.txt", GOOD)
    write_criteo(tmp_path / "mixed" / "b.txt", [line.split("\t", 1)[1] for line in GOOD])  # no label column
    with pytest.raises(CriteoFormatError, match="mixed schemas.*a.txt: 40 fields, b.txt: 39 fields"):
        discover(tmp_path / "mixed")
    write_criteo(tmp_path / "layouts" / "day_0", GOOD)
    write_criteo(tmp_path / "layouts" / "train.txt", GOOD)
    with pytest.raises(CriteoFormatError, match="mixes the day_N layout"):
        discover(tmp_path / "layouts")
    write_criteo(tmp_path / "test_only" / "test.txt", [line.split("\t", 1)[1] for line in GOOD])
    with pytest.raises(CriteoFormatError, match="39 tab-separated fields.*without labels"):
        preprocess(str(tmp_path / "test_only"), str(tmp_path / "out"), progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_a_config_naming_an_unknown_column_fails_before_any_work(tmp_path):
    path = write_criteo(tmp_path / "train.txt", GOOD)
    with pytest.raises(CriteoFormatError, match=r"sparse_columns names \['C27'\]"):
        preprocess(str(path), str(tmp_path / "out"), sparse_columns=["C1", "C27"], progress_bar=False)
    with pytest.raises(CriteoFormatError, match=r"dense_columns names \['C1'\]"):
        preprocess(str(path), str(tmp_path / "out"), dense_columns=["C1"], progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_day_files_are_read_in_day_order_gzipped_or_not(tmp_path):
    write_criteo(tmp_path / "days" / "day_10.gz", criteo_lines(3, first_index=300))
    write_criteo(tmp_path / "days" / "day_2", criteo_lines(4, first_index=200))
    write_criteo(tmp_path / "days" / "README.md", ["not data\n"])
    files = discover(tmp_path / "days")
    assert [(f.path.name, f.day) for f in files] == [("day_2", 2), ("day_10.gz", 10)]
    meta = preprocess(str(tmp_path / "days"), str(tmp_path / "out"), log1p=False, progress_bar=False)
    assert [(s["file"], s["day"], s["rows"]) for s in meta["shards"]] == [("day_2", 2, 4), ("day_10.gz", 10, 3)]
    first = np.load(tmp_path / "out" / "00001.I1.npy")
    assert first.tolist() == [300.0, 301.0, 302.0]

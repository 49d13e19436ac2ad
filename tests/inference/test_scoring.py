"""Batch scoring from the command line: export → predict on raw files of three layouts, one
output row per input row, bad rows as on_bad_row says, the same output with two processes."""

import csv
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest

from ctr.inference import load
from ctr.inference.scoring import score_files
from tests.inference.conftest import run, run_failing


def _read(path: Path) -> List[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _data_rows(path: Path, header: bool) -> int:
    return sum(1 for line in path.read_text().splitlines() if line) - int(header)


@pytest.mark.parametrize("layout, keys, header", [("criteo", "[label,C1]", False),
                                                  ("generic", "[user,movie]", True),
                                                  ("sparrow", "[userId,movieId]", True)])
def test_export_then_predict_from_the_command_line_scores_every_row(layout, keys, header, request, tmp_path):
    exported = request.getfixturevalue(layout)
    int8 = tmp_path / "int8"
    run("launch/export.py", f"run_dir={exported.run_dir}", "precision=int8", f"output={int8}")
    output = tmp_path / "scores.csv"
    run("launch/predict.py", f"artifact={int8}", f"input={exported.raw}", f"output={output}", f"key_columns={keys}",
        "batch_size=100", f"hydra.run.dir={tmp_path / 'predict'}")
    written = _read(output)
    assert len(written) == _data_rows(exported.raw, header)
    assert list(written[0]) == [*keys.strip("[]").split(","), "prediction"]
    with open(exported.raw, newline="") as stream:
        rows = list(csv.DictReader(stream)) if header else None
    if rows is not None:  # the keys are the input's, row by row, and the scores the in-process API's
        assert [r[k] for r in written for k in keys.strip("[]").split(",")] == \
               [r[k] for r in rows for k in keys.strip("[]").split(",")]
        expected = load(int8).predict(rows[:50])
        np.testing.assert_allclose([float(r["prediction"]) for r in written[:50]], expected, rtol=1e-6)
    summary = json.loads(output.with_name("scores.csv.summary.json").read_text())
    assert summary["rows"] == summary["written"] == summary["scored"] == len(written)


def _with_bad_rows(criteo, tmp_path: Path) -> Path:
    lines = criteo.raw.read_text().splitlines(keepends=True)[:300]
    lines[10] = lines[10].replace("\t", "\tx", 1)  # I1 not an integer
    lines[20] = "\t".join(lines[20].split("\t")[:30]) + "\n"  # 30 fields
    lines[30] = lines[30].replace("\t", "\t\t", 1)  # 41 fields
    path = tmp_path / "bad.txt"
    path.write_text("".join(lines))
    return path


def test_bad_raw_rows_stop_the_run_under_error_naming_file_and_line(criteo, tmp_path):
    bad = _with_bad_rows(criteo, tmp_path)
    output = tmp_path / "scores.csv"
    proc = run_failing("launch/predict.py", f"artifact={criteo.artifact}", f"input={bad}", f"output={output}",
                       f"hydra.run.dir={tmp_path / 'predict'}")
    assert f"{bad}:11: integer feature I1 is b'x" in proc.stderr
    assert not output.exists() and not output.with_name("scores.csv.partial").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_raw_rows_under_skip_get_an_empty_prediction_and_are_counted(criteo, tmp_path, workers):
    bad = _with_bad_rows(criteo, tmp_path)
    output = tmp_path / "scores.csv"
    summary = score_files(criteo.artifact, bad, output, ["I1"], "skip", batch_size=64, workers=workers)
    written = _read(output)
    assert len(written) == 300 == summary["rows"] == summary["written"]
    assert [i for i, r in enumerate(written) if r["prediction"] == ""] == [10, 20, 30]
    assert summary["bad_rows"] == {"integer": 1, "field count": 2} and summary["scored"] == 297
    assert [r["I1"] for r in written][:3] == [line.split("\t")[1] for line in bad.read_text().splitlines()[:3]]
    whole = tmp_path / "whole.csv"  # one batch: the same rows and scores (to float rounding of other batch shapes)
    score_files(criteo.artifact, bad, whole, ["I1"], "skip", batch_size=300, workers=1)
    assert [(r["I1"], r["prediction"] == "") for r in _read(whole)] == [(r["I1"], r["prediction"] == "") for r in written]
    np.testing.assert_allclose([float(r["prediction"] or "nan") for r in _read(whole)],
                               [float(r["prediction"] or "nan") for r in written], rtol=0, atol=1e-6)


def test_criteo_rows_without_the_label_score_as_with_it(criteo, tmp_path):
    unlabelled = tmp_path / "test.txt"
    lines = criteo.raw.read_text().splitlines(keepends=True)[:200]
    unlabelled.write_text("".join(line.split("\t", 1)[1] for line in lines))
    with_label, without = tmp_path / "a.csv", tmp_path / "b.csv"
    score_files(criteo.artifact, criteo.raw, with_label, batch_size=50)
    score_files(criteo.artifact, unlabelled, without, batch_size=50)
    assert _read(without) == _read(with_label)[:200]


def test_an_existing_output_or_another_format_is_refused(criteo, tmp_path):
    output = tmp_path / "scores.csv"
    output.write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        score_files(criteo.artifact, criteo.raw, output)
    assert output.read_text() == "mine"
    with pytest.raises(ValueError, match=r"scores.parquet: expected a .csv or .tsv file"):
        score_files(criteo.artifact, criteo.raw, tmp_path / "scores.parquet")

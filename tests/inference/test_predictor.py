"""The in-process API: an artifact's predictions equal the trained model's, from shard rows and
from raw rows; a damaged, modified or crafted artifact is refused without running anything."""

import json
from pathlib import Path
import pickle
import shutil

import numpy as np
import pytest
import torch

from ctr.data.rows import rows_to_batch
from ctr.inference import BadRowError, load
from ctr.inference.pipeline import CriteoPipeline
from ctr.train.export import ArtifactError, export, load_trained
from tests.inference.forging import resign
from tests.train.tampering import MakesMarker


def _trained_probabilities(trained, rows) -> np.ndarray:
    batch = trained.hashing(rows_to_batch(rows, trained.source.sparse_names))
    with torch.no_grad():
        _, (_, logits, _) = trained.task.eval()(batch)
    return torch.sigmoid(logits).numpy()


@pytest.mark.parametrize("layout", ["criteo", "generic", "sparrow"])
def test_artifact_predictions_equal_the_trained_models_and_its_auc_the_runs(layout, request):
    exported = request.getfixturevalue(layout)
    trained = load_trained(exported.run_dir)
    rows = trained.source.rows("test", 0, trained.source.num_rows("test"))
    predictor = load(exported.artifact)
    np.testing.assert_allclose(predictor.predict_rows(rows), _trained_probabilities(trained, rows), rtol=0, atol=1e-6)
    recorded = json.loads((exported.run_dir / "metrics.json").read_text())["test_auc"]
    assert predictor.manifest["metrics"]["auc"] == pytest.approx(recorded, abs=1e-6)


def test_raw_criteo_rows_score_as_their_preprocessed_rows(criteo):
    """The test split is the file's last rows (ratio split): scored from the raw text, from
    dicts without the label, and from the shards, they get the same probabilities."""
    trained = load_trained(criteo.run_dir)
    count = trained.source.num_rows("test")
    expected = _trained_probabilities(trained, trained.source.rows("test", 0, count))
    predictor = load(criteo.artifact)
    lines = criteo.raw.read_bytes().splitlines(keepends=True)[-count:]
    chunk = next(predictor.pipeline.chunks(criteo.raw, 10_000))
    from_text = predictor.score(chunk)[0][-count:]
    np.testing.assert_allclose(from_text, expected, rtol=0, atol=1e-6)
    columns = CriteoPipeline.COLUMNS
    dicts = [dict(zip(columns[1:], line.rstrip(b"\n").decode().split("\t")[1:])) for line in lines]
    np.testing.assert_allclose(predictor.predict(dicts), expected, rtol=0, atol=1e-6)


def test_raw_schema_rows_with_derived_columns_score_as_their_preprocessed_rows(generic):
    """The generic layout's derived columns (a timestamp prefix; a cross with a joined column) are
    computed from the raw file as preprocessing computed them: its test split (the latest 20% by
    timestamp, in file order) scores from the raw text as from the shards."""
    trained = load_trained(generic.run_dir)
    count = trained.source.num_rows("test")
    expected = _trained_probabilities(trained, trained.source.rows("test", 0, count))
    stamps = [int(line.split(",")[3]) for line in generic.raw.read_text().splitlines()[1:]]
    test = np.sort(np.argsort(stamps, kind="stable")[len(stamps) - count:])
    predictor = load(generic.artifact)
    chunk = next(predictor.pipeline.chunks(generic.raw, 10_000))
    np.testing.assert_allclose(predictor.score(chunk)[0][test], expected, rtol=0, atol=1e-6)


def test_dict_rows_with_bad_fields_follow_on_bad_row(criteo):
    predictor = load(criteo.artifact)
    good = {"I1": "3", "I2": "", "C1": "68fd1e64"}
    bad = {"I1": "three", "C1": "68fd1e64"}
    with pytest.raises(BadRowError, match=r"row 1: integer feature I1 is b'three'.*on_bad_row=skip"):
        predictor.predict([good, bad, good])
    scores = predictor.predict([good, bad, good], on_bad_row="skip")
    assert np.isnan(scores[1]) and scores[0] == scores[2] and 0 < scores[0] < 1


def test_schema_dict_rows_may_leave_out_the_label_and_use_the_side_table(generic):
    predictor = load(generic.artifact)
    row = {"user": "u3", "movie": "m5", "ts": "5", "count": "7", "genres": "Action|Drama", "g1": "Comedy",
           "g2": "", "g3": ""}
    labelled = predictor.predict([{**row, "rating": "5"}])
    unlabelled = predictor.predict([row])
    assert labelled == unlabelled
    # u3's age and country come from users.csv, which the artifact carries: another user scores differently.
    assert predictor.predict([{**row, "user": "u4"}]) != unlabelled


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "edited config", "missing pipeline"])
def test_a_modified_or_truncated_artifact_is_refused_naming_the_file(criteo, tmp_path, damage):
    artifact = Path(shutil.copytree(criteo.artifact, tmp_path / "artifact"))
    weights = artifact / "weights.pt"
    if damage == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        expected = f"{weights}: sha256 differs"
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
        expected = f"{weights}: .* bytes, the manifest records .* \\(truncated"
    elif damage == "edited config":
        config = artifact / "config.yaml"
        config.write_text(config.read_text().replace("dim: 8", "dim: 9"))
        expected = f"{config}: sha256 differs"
    else:
        (artifact / "pipeline.json").unlink()
        expected = "pipeline.json: missing"
    with pytest.raises(ArtifactError, match=expected):
        load(artifact)


@pytest.mark.parametrize("forged_manifest", [False, True])
def test_a_crafted_pickle_in_place_of_the_weights_does_not_run(criteo, tmp_path, forged_manifest):
    artifact = Path(shutil.copytree(criteo.artifact, tmp_path / "artifact"))
    marker = tmp_path / "marker"
    (artifact / "weights.pt").write_bytes(pickle.dumps({"weight": MakesMarker(marker)}))
    if forged_manifest:
        resign(artifact)
    with pytest.raises(ArtifactError, match="not a file of plain tensors" if forged_manifest else "truncated or modified"):
        load(artifact)
    assert not marker.exists()


def test_a_forged_config_naming_a_foreign_target_is_refused_without_running_it(criteo, tmp_path):
    artifact = Path(shutil.copytree(criteo.artifact, tmp_path / "artifact"))
    marker = tmp_path / "marker"
    config = artifact / "config.yaml"
    config.write_text(config.read_text() + f"\nextra:\n  _target_: os.makedirs\n  name: {marker}\n")
    resign(artifact)
    with pytest.raises(ValueError, match="extra._target_='os.makedirs'|extra"):
        load(artifact)
    assert not marker.exists()


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_quantized_artifacts_score_close_to_fp32_in_fewer_table_bytes(criteo, tmp_path, precision):
    manifest = export(load_trained(criteo.run_dir), precision, tmp_path / precision)
    trained = load_trained(criteo.run_dir)
    rows = trained.source.rows("test", 0, trained.source.num_rows("test"))
    gap = np.abs(load(tmp_path / precision).predict_rows(rows) - _trained_probabilities(trained, rows)).max()
    assert 0 < gap < {"fp16": 1e-3, "int8": 1e-2, "int4": 5e-2}[precision]
    assert manifest["table_bytes"] < manifest["table_bytes_before"]

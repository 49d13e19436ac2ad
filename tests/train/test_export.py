"""Quantized export of a trained run, and offline evaluation through the entry points."""

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc

from ctr.data.rows import rows_to_batch
from ctr.train.checkpoint import CheckpointError
from ctr.train.export import CONFIG_FILE, export, load_exported, load_trained
from tests.hydra_config import TINY
from tests.inference.forging import resign
from tests.train.tampering import MakesMarker, rehash

REPO = Path(__file__).resolve().parents[2]
# Largest gap allowed between a row's predicted probability from the int8 export and from
# the fp32 model it came from (measured on TINY: 6.5e-5; int4: 2.1e-3).
INT8_PROBABILITY_TOLERANCE = 1e-3


def _run(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 2-rank training run of a TINY model with 16-wide fp32 tables."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    _run("launch/train.py", *TINY, "embedding.dim=16", "distributed.nproc_per_node=2", f"hydra.run.dir={run_dir}")
    return run_dir


def _probabilities(trained) -> torch.Tensor:
    rows = trained.source.rows("test", 0, trained.source.num_rows("test"))
    batch = trained.hashing(rows_to_batch(rows, trained.source.sparse_names))
    with torch.no_grad():
        _, (_, logits, _) = trained.task.eval()(batch)
    return torch.sigmoid(logits)


def test_int8_export_predicts_within_tolerance_of_the_fp32_model_in_fewer_bytes(run_dir, tmp_path):
    fp32 = load_trained(run_dir)
    expected = _probabilities(fp32)
    summary = export(load_trained(run_dir), "int8", tmp_path / "int8")
    exported = load_exported(tmp_path / "int8")
    gap = (_probabilities(exported) - expected).abs().max().item()
    assert 0 < gap < INT8_PROBABILITY_TOLERANCE
    # 16 fp32 values (64 bytes) per row become 16 int8 values + fp16 scale and bias, padded to 32
    assert summary["table_bytes"] * 2 == summary["table_bytes_before"]


def test_export_and_evaluate_entry_points_score_the_checkpoint_and_the_int4_export(run_dir, tmp_path):
    best = run_dir / "checkpoints" / "best"
    _run("launch/export.py", f"run_dir={run_dir}", "precision=int4", f"output={tmp_path / 'int4'}", f"checkpoint_path={best}")
    _run("launch/evaluate.py", f"run_dir={run_dir}", f"checkpoint_path={best}", f"hydra.run.dir={tmp_path / 'eval_fp32'}")
    _run("launch/evaluate.py", f"exported={tmp_path / 'int4'}", f"hydra.run.dir={tmp_path / 'eval_int4'}")
    fp32 = json.loads((tmp_path / "eval_fp32" / "eval_test.json").read_text())
    int4 = json.loads((tmp_path / "eval_int4" / "eval_test.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert fp32["auc"] == pytest.approx(trained["test_auc"], abs=1e-6)
    assert int4["auc"] == pytest.approx(fp32["auc"], abs=0.05)
    assert int4["table_bytes"] * 4 == fp32["table_bytes"]


def test_export_replaces_only_a_previous_export_never_other_files_or_the_run(run_dir, tmp_path):
    trained = load_trained(run_dir)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not ctr's")
    for output in (foreign, run_dir, run_dir.parent):
        with pytest.raises(ValueError, match=f"output={output}"):
            export(trained, "int8", output)
    assert (foreign / "notes.txt").read_text() == "not ctr's" and (run_dir / "metrics.json").is_file()
    previous = tmp_path / "previous"
    export(trained, "int8", previous)
    export(load_trained(run_dir), "int4", previous)
    assert json.loads((previous / "manifest.json").read_text())["precision"] == "int4"
    (previous / "notes.txt").write_text("added by a user")
    with pytest.raises(ValueError, match=r"also holds \['notes.txt'\]"):
        export(load_trained(run_dir), "int8", previous)
    assert (previous / "notes.txt").is_file()


@pytest.mark.parametrize("stored", ["run", "export"])
def test_a_stored_config_naming_a_foreign_target_is_refused_without_running_it(run_dir, tmp_path, stored):
    if stored == "run":
        directory, config, load = tmp_path / "run", tmp_path / "run" / ".hydra" / CONFIG_FILE, load_trained
        shutil.copytree(run_dir, directory)
    else:
        directory, config, load = tmp_path / "int8", tmp_path / "int8" / CONFIG_FILE, load_exported
        export(load_trained(run_dir), "int8", directory)
    marker = tmp_path / "marker"
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["extra"] = {"_target_": "os.makedirs", "name": str(marker)}
    config.write_text(yaml.safe_dump(cfg))
    if stored == "export":
        resign(directory)  # a forger's edit, past the checksums: the allow-list still refuses it
    with pytest.raises(ValueError, match="data.extra._target_='os.makedirs'"):
        load(directory)
    assert not marker.exists()


def test_a_stored_config_with_a_key_outside_the_schema_is_refused_naming_it(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    config = tmp_path / "run" / ".hydra" / CONFIG_FILE
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["batch_sizes"] = 1
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=f"{config}: .*batch_sizes"):
        load_trained(tmp_path / "run")


@pytest.mark.parametrize("damage", ["crafted .metadata", "overwritten shard"])
def test_evaluation_and_export_refuse_a_crafted_or_damaged_checkpoint(run_dir, tmp_path, damage):
    shutil.copytree(run_dir, tmp_path / "run")
    best = tmp_path / "run" / "checkpoints" / "best"
    marker = tmp_path / "marker"
    if damage == "crafted .metadata":
        metadata = pickle.loads((best / ".metadata").read_bytes())
        metadata.storage_meta.modules = [MakesMarker(marker)]
        (best / ".metadata").write_bytes(pickle.dumps(metadata))
        rehash(best)
        expected = pickle.UnpicklingError
    else:
        shard = best / "__1_0.distcp"
        with open(shard, "r+b") as f:
            f.seek(shard.stat().st_size // 2)
            f.write(b"\xff" * 16)
        expected = CheckpointError
    with pytest.raises(expected, match=str(best)):
        load_trained(tmp_path / "run")
    assert not marker.exists()


def test_a_bf16_dense_tower_is_stored_in_bf16_and_loads_as_export_measured_it(run_dir, tmp_path):
    manifest = export(load_trained(run_dir), "fp32", tmp_path / "bf16", dense_precision="bf16")
    weights = torch.load(tmp_path / "bf16" / "weights.pt", weights_only=True)
    dense = [t for name, t in weights.items() if ".embedding_bags." not in name and t.is_floating_point()]
    assert dense and all(t.dtype == torch.bfloat16 for t in dense)
    exported = load_exported(tmp_path / "bf16")
    labels = exported.source.rows("test", 0, exported.source.num_rows("test")).labels
    auc = binary_auroc(_probabilities(exported), torch.from_numpy(labels).long()).item()
    assert auc == pytest.approx(manifest["metrics"]["auc"], abs=1e-6)
    assert (_probabilities(exported) - _probabilities(load_trained(run_dir))).abs().max().item() < 2e-2

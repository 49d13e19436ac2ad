"""benchmarks/gpu_check.py: its arguments, its refusal without a GPU, and its CPU-runnable
phases end to end at tiny sizes on gloo (the phases a GPU host runs at full size)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check import CASES, parse_args  # noqa: E402


def _gpu_check(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_arguments_parse_and_unknown_cases_are_refused(capsys):
    args = parse_args(["--cpu", "--phases", "0", "3", "--cases", "row_wise_fp8", "uvm_cache", "--nproc", "2"])
    assert (args.cpu, args.phases, args.cases, args.nproc) == (True, [0, 3], ["row_wise_fp8", "uvm_cache"], 2)
    assert parse_args([]).phases == [0, 1, 2, 3, 4] and not parse_args([]).cpu
    with pytest.raises(SystemExit):
        parse_args(["--cases", "diagonal_wise"])
    assert "invalid choice: 'diagonal_wise'" in capsys.readouterr().err


def test_the_matrix_covers_what_the_issue_asks():
    overrides = " ".join(o for case in CASES.values() for o in case.overrides)
    for wanted in ("sharding=table_wise", "sharding=row_wise", "sharding=table_row_wise", "sharding=column_wise",
                   "comms=fp16", "comms=bf16", "comms=int8", "comms=fp8", "optimizer.sparse=adam",
                   "embedding.precision=fp16 trainer.dense_precision=bf16", "model=wide_deep", "sharding=auto",
                   "sharding=uvm_caching", "optimizer.sparse_weight_decay", "+embedding.update.cat_0=frozen"):
        assert wanted in overrides


def test_without_a_gpu_it_stops_saying_so(tmp_path):
    proc = _gpu_check("--out", str(tmp_path))
    assert proc.returncode != 0 and "no GPU is visible" in proc.stderr and "--cpu" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing ran


def test_cpu_phases_write_one_json_each_and_the_matrix_goes_past_a_failing_case(tmp_path):
    """Phases 0-3 at tiny sizes (phase 4 is benchmarks/throughput.py, run by test_throughput.py at the same
    tiny point); the matrix runs a gloo case and a CUDA-only one, which fails and is recorded."""
    proc = _gpu_check("--cpu", "--out", str(tmp_path), "--phases", "0", "1", "2", "3",
                      "--cases", "row_wise_bf16", "table_wise_fp16")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the CUDA-only case failed
    phase = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("phase*.json")}
    assert sorted(phase) == ["phase0_versions", "phase1_main_job", "phase2_resume_and_export", "phase3_matrix"]
    assert [phase[name]["status"] for name in sorted(phase)] == ["ok", "ok", "ok", "failed"]
    assert phase["phase0_versions"]["versions"]["torch"] and "cpu_flags" in phase["phase0_versions"]
    main = phase["phase1_main_job"]
    assert 0.5 < main["teacher_auc"] <= 1 and main["samples_per_second"] > 0 and main["seconds_to_first_step"] > 0
    resumed = phase["phase2_resume_and_export"]
    assert (resumed["stopped_at_step"], resumed["resumed_from_step"], resumed["final_step"]) == (10, 10, 20)
    assert abs(resumed["cpu_eval_auc_difference"]) < 1e-6 and resumed["int8_export"]["precision"] == "int8"
    assert 0 < resumed["int8_test_auc"] < 1
    cases = phase["phase3_matrix"]["cases"]
    assert list(cases) == ["row_wise_bf16", "table_wise_fp16"]  # the failure did not stop the matrix
    assert cases["row_wise_bf16"]["status"] == "failed" and "cannot run on CPU/gloo" in cases["row_wise_bf16"]["error"]
    assert cases["table_wise_fp16"]["status"] == "ok"
    assert cases["table_wise_fp16"]["comms_bytes_per_step"]["by_sharding_type"] == {"table_wise": {"forward": 0, "backward": 0}}  # 1 rank sends nothing

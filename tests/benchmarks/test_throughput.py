"""The throughput benchmark on a tiny grid: its JSON parses, its figures are measured in the
run (samples/s recomputed from the recorded step times), and its ratios come from them."""

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctr.parallel import hardware

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from throughput_report import report  # noqa: E402

TINY_POINT = [
    "batch_size=64", "dim=8", "rows=1000", "warmup_steps=1", "steps=4", "repetitions=2", "profile_steps=2",
    "overrides=['model.num_residual_units=1','model.residual_hidden_dim=16','data.num_sparse=5','data.vocab_min=5','distributed.backend=gloo']",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list:
    sweep = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "-m", "model_name=deep_crossing", "world_size=1,2", "rows=1000", "dense_precision=fp32",
         *TINY_POINT, f"hydra.sweep.dir={sweep}", "~hydra.callbacks.throughput_report"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(sweep.rglob("throughput.json"))
    assert len(files) == 2
    return [json.loads(f.read_text()) for f in files]


def _rate(steps, samples_per_step):
    return samples_per_step * len(steps) / sum(steps)


def test_figures_are_measured_and_ratios_computed_from_them(results):
    for r in results:
        ws, batch = r["world_size"], r["point"]["batch_size"]
        assert r["point"]["world_size"] == ws
        ctr, plain = r["ctr"], r["plain"]
        assert [len(s) for s in ctr["step_seconds_per_repetition"]] == [4, 4]
        for steps, rate in zip(ctr["step_seconds_per_repetition"], ctr["samples_per_second_per_repetition"]):
            assert min(steps) > 0 and math.isclose(rate, _rate(steps, batch * ws))
        for steps, rate in zip(plain["step_seconds_per_repetition"], plain["samples_per_second_per_repetition"]):
            assert min(steps) > 0 and math.isclose(rate, _rate(steps, batch))
        # measured, not constants: step times vary from step to step
        assert len({s for steps in ctr["step_seconds_per_repetition"] for s in steps}) > 1
        assert math.isclose(r["ratio_to_plain"], ctr["samples_per_second"] / plain["samples_per_second"])
        for ratio, c, p in zip(r["ratio_to_plain_per_repetition"], ctr["samples_per_second_per_repetition"],
                               plain["samples_per_second_per_repetition"]):
            assert math.isclose(ratio, c / p)
        assert len(ctr["peak_memory_bytes_per_rank"]) == ws and min(ctr["peak_memory_bytes_per_rank"]) > 0
        limits = r["limits"]
        assert limits["matmul_flops_per_second"]["fp32"] > 0 and limits["copy_bytes_per_second"] > 0
        dense = r["dense"]
        assert math.isclose(dense["fraction_of_matmul_peak"],
                            dense["flops_per_second"] / limits["matmul_flops_per_second"]["fp32"])
        emb = r["embedding_bytes_per_step"]
        assert emb["ids"] == 5 * batch * ws  # one id per feature and sample
        assert 0 < emb["unique_rows"] <= emb["ids"] and emb["read"] == emb["ids"] * 8 * 4
        assert r["breakdown_seconds_per_step"]["dense_forward"] > 0
        assert r["machine"]["allocator"] != "glibc default"  # the benchmark set its allocator
        assert r["machine"]["cpu_runs_bf16_natively"] == ("avx512_bf16" in r["machine"]["cpu_flags"]
                                                           or "amx_bf16" in r["machine"]["cpu_flags"])
    assert {r["threads_per_rank"] for r in results if r["world_size"] == 2} == {1}


def test_report_renders_table_and_plots_from_the_json(results, tmp_path):
    for i, r in enumerate(results):
        (tmp_path / "runs" / str(i)).mkdir(parents=True)
        (tmp_path / "runs" / str(i) / "throughput.json").write_text(json.dumps(r))
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\nbefore\n")
    text = report([tmp_path / "runs"], tmp_path / "store.json", results_md, tmp_path)
    assert len(json.loads((tmp_path / "store.json").read_text())) == 2
    page = results_md.read_text()
    assert page.startswith("# Results\n\nbefore\n") and text in page
    assert f"{results[0]['ratio_to_plain_per_repetition'][0]:.2f}" in page or "ctr ÷ plain" in page
    assert {p.name for p in tmp_path.glob("throughput_*.png")} == {
        "throughput_world_size.png", "throughput_dim.png", "throughput_precision.png"}
    # rendering again from the stored JSON replaces the section, not appends
    report([], tmp_path / "store.json", results_md, tmp_path)
    assert results_md.read_text() == page


def test_a_bf16_point_is_skipped_with_its_reason_on_a_cpu_without_bf16(tmp_path, monkeypatch):
    """The benchmark's own entry point, in this process on an AVX2-only CPU (its flags faked)."""
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ["avx2", "fma"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "dense_precision=bf16", f"hydra.run.dir={tmp_path}",
                                      "hydra/job_logging=none", "hydra/hydra_logging=none"])
    runpy.run_path(str(REPO / "benchmarks" / "throughput.py"), run_name="__main__")
    skipped = json.loads((tmp_path / "skipped.json").read_text())
    assert skipped["point"]["dense_precision"] == "bf16" and "bf16 instructions" in skipped["reason"]
    assert skipped["machine"]["cpu_flags"] == ["avx2", "fma"] and not (tmp_path / "throughput.json").exists()

"""launch/setup.sh's check that torch and fbgemm-gpu make one CUDA stack, on faked builds."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))

from check_cuda_stack import problem  # noqa: E402


def test_a_cpu_torch_is_not_a_cuda_stack():
    assert "is built for CUDA None, not 13.0 (cu130)" in problem("cu130")


def test_a_torch_for_another_cuda_is_named_with_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    found = problem("cu130")
    assert "built for CUDA 12.6, not 13.0" in found and "CTR_CUDA" in found


def test_a_driver_too_old_for_the_cuda_is_said(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "sees no GPU" in problem("cu130") and "CTR_CUDA=cu126" in problem("cu130")


def test_a_matching_stack_whose_fbgemm_loads_passes(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert problem("cu126") == ""

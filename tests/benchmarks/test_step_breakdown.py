"""The step breakdown sums each operator's own time: CPU time on CPU, its kernels' device time on CUDA."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import step_breakdown  # noqa: E402


def _event(name, cpu_us, device_us, parent=None, device_type=DeviceType.CPU):
    return SimpleNamespace(name=name, cpu_parent=parent, device_type=device_type,
                           self_cpu_time_total=cpu_us, self_device_time_total=device_us)


class _FakeProfile:
    """What torch.profiler records for one step: a stage, an op inside it, and the op's kernel."""

    def __init__(self, activities):
        forward = _event("## forward 0 ##", cpu_us=100, device_us=0)
        mm = _event("aten::mm", cpu_us=10, device_us=4000, parent=forward)
        kernel = _event("ampere_sgemm", cpu_us=0, device_us=4000, device_type=DeviceType.CUDA)
        self.recorded = [forward, mm, kernel]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def events(self):
        return self.recorded


@pytest.mark.parametrize("device,dense_forward", [("cpu", 110e-6), ("cuda", 4000e-6)])
def test_each_category_gets_cpu_time_on_cpu_and_device_time_on_cuda(monkeypatch, device, dense_forward):
    monkeypatch.setattr(step_breakdown, "profile", _FakeProfile)
    per_step = step_breakdown.breakdown(lambda: [0.01], steps=0, device=torch.device(device))
    # the kernel is counted once, in the operator that launched it
    assert per_step["dense_forward"] == pytest.approx(dense_forward)
    assert per_step["other"] == pytest.approx(0.01 - dense_forward)

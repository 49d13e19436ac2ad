"""Device facts: the memory the planner is told about, and the CPU's bf16 support."""

import os
from types import SimpleNamespace

import pytest
import torch
from torchrec.distributed.planner.constants import DDR_CAP, HBM_CAP

from ctr.parallel import hardware
from ctr.parallel.hardware import GIB, check_dense_precision, cpu_runs_bf16_natively, memory_facts
from ctr.parallel.process_group import DistributedEnv
from ctr.train.run import build_trainable
from tests.hydra_config import TINY, compose


@pytest.fixture
def an_h200(monkeypatch):
    """This process sees one 141 GiB GPU with 139 GiB free."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(name="NVIDIA H200", total_memory=141 * GIB))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (139 * GIB, 141 * GIB))


def test_a_gpu_job_plans_for_the_gpus_memory_and_its_share_of_the_host(an_h200):
    facts = memory_facts("cuda", local_world_size=8)
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert (facts.hbm_bytes, facts.hbm_free_bytes, facts.host_bytes) == (141 * GIB, 139 * GIB, host // 8)
    assert "NVIDIA H200" in facts.hbm_source and "/ 8 local ranks" in facts.host_source


def test_planning_another_cluster_keeps_torchrecs_defaults_and_says_so(an_h200):
    facts = memory_facts("cuda", local_world_size=8, on_this_machine=False)
    assert (facts.hbm_bytes, facts.host_bytes) == (HBM_CAP, DDR_CAP)
    assert "TorchRec's default" in facts.hbm_source and "TorchRec's default" in facts.host_source


def test_a_cpu_job_plans_for_the_hosts_memory():
    facts = memory_facts("cpu", local_world_size=2)
    assert 0 < facts.host_bytes < DDR_CAP and facts.hbm_free_bytes is None


@pytest.mark.parametrize("flags,native", [
    (["avx2", "fma"], False), (["avx2", "avx512f", "avx512_bf16"], True), (["avx2", "amx_bf16"], True),
    (["asimd", "bf16"], True),
])
def test_bf16_support_is_read_from_the_cpus_flags(monkeypatch, flags, native):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    assert cpu_runs_bf16_natively() is native


def test_bf16_is_refused_at_start_up_on_a_cpu_without_bf16_and_says_why(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ["avx2", "fma"])
    cfg = compose(*TINY, "trainer.dense_precision=bf16")
    env = DistributedEnv(0, 1, 0, 1, torch.device("cpu"), "gloo")
    with pytest.raises(ValueError, match=r"trainer.dense_precision=bf16: this CPU has no bf16 instructions.*"
                                         r"\['avx2', 'fma'\].*60-90x slower.*use trainer.dense_precision=fp32"):
        build_trainable(cfg, env)
    check_dense_precision("fp32", torch.device("cpu"))
    check_dense_precision("bf16", torch.device("cuda"))  # GPUs run bf16 natively

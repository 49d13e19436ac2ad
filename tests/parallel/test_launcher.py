"""The self-launcher's environment for its ranks: threads and the tuned allocator."""

import os

import pytest

from ctr.parallel.launcher import TUNED_MALLOC, launch_workers


def _rank_env() -> dict:
    return {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", *TUNED_MALLOC)}


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("OMP_NUM_THREADS", "CTR_MALLOC", *TUNED_MALLOC):
        monkeypatch.delenv(key, raising=False)


def test_ranks_get_tuned_malloc_and_a_share_of_threads_and_the_parent_keeps_its_env(clean_env):
    results = launch_workers(_rank_env, 2)
    assert set(results) == {0, 1}
    for env in results.values():
        assert {k: env[k] for k in TUNED_MALLOC} == TUNED_MALLOC
        assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert not any(key in os.environ for key in ("OMP_NUM_THREADS", *TUNED_MALLOC))


def test_glibc_defaults_on_request_and_user_settings_win(clean_env, monkeypatch):
    monkeypatch.setenv("CTR_MALLOC", "glibc")
    assert all(launch_workers(_rank_env, 1)[0][k] is None for k in TUNED_MALLOC)
    monkeypatch.delenv("CTR_MALLOC")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    env = launch_workers(_rank_env, 1)[0]
    assert env["MALLOC_MMAP_THRESHOLD_"] == "131072" and env["MALLOC_TOP_PAD_"] is None

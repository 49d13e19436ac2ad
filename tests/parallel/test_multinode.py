"""Multi-node launch: two torchrun "nodes" on loopback train exactly like one node with two
ranks, and the Slurm launcher config that README documents loads."""

import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from torch.distributed import TCPStore
from hydra.utils import instantiate

from ctr.config import register_configs
from tests.hydra_config import CONFIGS, TINY

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# Column shards put half of every table on each node, so lookups cross the "network".
JOB = [*TINY, "sharding=column_wise", "sharding.min_partition=4"]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_two_nodes_on_loopback_train_like_one_node(tmp_path):
    # The rendezvous store lives in this process, not in whichever agent binds the port
    # first: an agent hosting it exits when its own rank is done, and the other agent's
    # next poll of the store then fails a job that has succeeded (a torchrun teardown
    # race; both agents fall back to being clients of a store that is already there).
    store = TCPStore("localhost", 0, is_master=True, wait_for_workers=False)  # port 0: the OS picks, no race
    endpoint = f"localhost:{store.port}"
    nodes_dir, node_dir = tmp_path / "two_nodes", tmp_path / "one_node"
    node = [TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, "--rdzv-id", "ctr-test", "launch/train.py", *JOB, f"hydra.run.dir={nodes_dir}"]
    procs = [
        subprocess.Popen(node, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    del store
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    single = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "launch/train.py", *JOB, f"hydra.run.dir={node_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]

    plan = json.loads((nodes_dir / "plan.json").read_text())
    assert plan["planner"]["world_size"] == 2 and plan["planner"]["local_world_size"] == 1
    assert all(row["ranks"] == [0, 1] for row in plan["tables"])
    two_nodes, one_node = _metrics(nodes_dir), _metrics(node_dir)
    assert two_nodes["world_size"] == 2 and two_nodes["train_steps"] == 10
    for key in ("test_auc", "test_log_loss"):
        assert abs(two_nodes[key] - one_node[key]) < 1e-6, (key, two_nodes[key], one_node[key])


def test_slurm_launcher_config_loads():
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher.partition == "gpu" and launcher.nodes == 1 and launcher.gpus_per_node == 8
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"

"""Plans sharding without training: `python launch/plan.py [--config-name criteo_1tb_64gpu] [overrides]`.

Tables are built on the meta device (nothing allocated), so any cluster can be planned:
set `sharding.topology.*`, `sharding.memory_budget_gb` and `trainer.batch_size`. Prints
the plan and the planner's per-rank memory and perf estimates, writes them to the run
dir as plan.json, and exits with status 2 when the model does not fit.
"""

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ctr.config import group_overrides, register_configs
from ctr.train.console import quiet_library_noise
from ctr.train.plan import plan_job

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    quiet_library_noise()
    result = plan_job(cfg)
    print(result.text)
    (Path(HydraConfig.get().runtime.output_dir) / "plan.json").write_text(json.dumps(result.report, indent=2))
    if not result.fits:
        sys.exit(2)


if __name__ == "__main__":
    # `embedding.hashing=qr` picks the option as `embedding/hashing=qr` does.
    sys.argv[1:] = group_overrides(sys.argv[1:])
    main()

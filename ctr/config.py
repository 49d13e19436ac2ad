"""Typed schema of the Hydra configuration; each dataclass mirrors one file in `configs/`.

Registering these with Hydra's ConfigStore makes a misspelt key or a wrong type fail at
start-up with the key's name, instead of being silently ignored.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import os

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class SyntheticDataConfig:
    """`configs/data/synthetic.yaml`: Criteo-shaped rows with a planted teacher model."""

    _target_: str = "ctr.data.synthetic.SyntheticCriteo"
    num_dense: int = 13
    num_sparse: int = 26
    vocab_min: int = 10
    vocab_max: int = 100_000
    zipf_exponent: float = 1.1
    train_rows: int = 2_000_000
    val_rows: int = 50_000
    test_rows: int = 100_000
    seed: int = 0


@dataclass
class DeepCrossingConfig:
    """`configs/model/deep_crossing.yaml`: Shan et al. 2016, residual units over stacked features."""

    _target_: str = "ctr.models.deep_crossing.DeepCrossing"
    num_residual_units: int = 3
    residual_hidden_dim: int = 256


@dataclass
class EmbeddingConfig:
    """`configs/embedding/*.yaml`: table rows and vector width, globally or per feature."""

    dim: int = 16
    num_embeddings: int = 100_000
    num_embeddings_per_feature: Dict[str, int] = field(default_factory=dict)
    dim_per_feature: Dict[str, int] = field(default_factory=dict)


@dataclass
class ShardingConfig:
    """`configs/sharding/*.yaml`: how TorchRec's planner places the tables.

    `sharding_type` None lets the planner choose among all types the device supports.
    """

    sharding_type: Optional[str] = "table_wise"
    memory_budget_gb: Optional[float] = None


@dataclass
class OptimizerConfig:
    """`configs/optimizer/*.yaml`: fused in-backward optimizer for tables, Adam for the dense tower."""

    sparse: str = "rowwise_adagrad"
    sparse_lr: float = 0.05
    sparse_eps: float = 1e-8
    dense_lr: float = 1e-3


@dataclass
class TrainerConfig:
    """`configs/trainer/*.yaml`: batch sizes, duration and logging cadence."""

    batch_size: int = 2048
    eval_batch_size: int = 8192
    epochs: int = 1
    max_steps: Optional[int] = None
    log_every_steps: int = 50
    progress_bar: bool = True


@dataclass
class DistributedConfig:
    """`configs/distributed/*.yaml`: process layout and communication backend."""

    nproc_per_node: int = 2
    backend: str = "auto"
    seed: int = 1234


@dataclass
class Config:
    """`configs/config.yaml`: the whole job."""

    data: Any = MISSING
    model: Any = MISSING
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def register_configs() -> None:
    """Registers the schemas: the whole job, and one per option of the untyped groups.

    `data` and `model` hold different dataclasses per option, so each option's YAML
    extends its schema (`defaults: [<name>_schema]`) to get the same key checking.
    """
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    # Under torchrun every rank starts the Hydra app; only rank 0 writes the resolved config.
    OmegaConf.register_new_resolver(
        "ctr_rank0_only", lambda value: value if os.environ.get("RANK", "0") == "0" else None, replace=True
    )
    store.store(group="data", name="synthetic_schema", node=SyntheticDataConfig)
    store.store(group="model", name="deep_crossing_schema", node=DeepCrossingConfig)

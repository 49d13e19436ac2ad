"""Composes the shipped configs with overrides, as `launch/train.py` would."""

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from ctr.config import group_overrides, register_configs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# A model small enough for a multi-rank run to take seconds, on any data; one epoch and no
# early stopping (the defaults train to convergence), unless a test asks for more.
TINY_MODEL = [
    "trainer.epochs=1",
    "trainer.early_stopping_patience=null",
    "embedding.dim=8",
    "embedding.num_embeddings=200",
    "model.num_residual_units=2",
    "model.residual_hidden_dim=16",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.progress_bar=false",
]

# Test jobs run on the CPU with gloo, also on a GPU host: `auto` would pick NCCL there, one
# GPU per rank, and a 2-rank job on a 1-GPU host would fail with "invalid device ordinal".
ON_CPU = ["distributed.backend=gloo"]

# ... and a synthetic data set to match.
TINY = [
    *ON_CPU,
    "data.num_dense=4",
    "data.num_sparse=6",
    "data.vocab_min=5",
    "data.vocab_max=300",
    "data.train_rows=640",
    "data.val_rows=64",
    "data.test_rows=256",
    *TINY_MODEL,
]


def compose(*overrides: str, config_name: str = "config") -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=group_overrides(overrides))

"""`embedding.pooling`: a bag pooled by mean is the mean of its rows, unsharded and sharded
(FBGEMM's fused CPU kernel and the data-parallel kernel)."""

import pytest
import torch
from omegaconf import OmegaConf
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.tables import embedding_bag_configs, per_table_setting
from ctr.parallel.model_parallel import distribute
from ctr.parallel.optimizers import TableOptimizer, apply_table_optimizer
from ctr.parallel.planner import plan_sharding
from ctr.parallel.process_group import init_distributed, shutdown
from ctr.parallel.state import load_full_state
from tests.hydra_config import compose
from tests.multiprocess import run_ranks

SHARED = {"genre": ["movieGenres", "userGenres"]}
NAMES = ["user", "movieGenres", "userGenres"]
ROWS = {"user": {"user": 5}, "movieGenres": {"movieGenres": 6}, "userGenres": {"userGenres": 6}}
WEIGHTS = {"embedding_bags.t_user.weight": torch.arange(20.0).reshape(5, 4),
           "embedding_bags.t_genre.weight": torch.arange(24.0).reshape(6, 4) ** 2}


def _tables(pooling_per_feature):
    pooling = per_table_setting(NAMES, "sum", pooling_per_feature, SHARED, "embedding.pooling_per_feature")
    return embedding_bag_configs(ROWS, dict.fromkeys(NAMES, 4), "fp32", SHARED, pooling)


def _kjt() -> KeyedJaggedTensor:
    # user: [1], [2]; movieGenres: [0, 3, 5], []; userGenres: [2], [1, 4]
    return KeyedJaggedTensor.from_lengths_sync(
        NAMES, torch.tensor([1, 2, 0, 3, 5, 2, 1, 4]), torch.tensor([1, 1, 3, 0, 1, 2]),
    )


def _expected() -> torch.Tensor:
    user, genre = WEIGHTS["embedding_bags.t_user.weight"], WEIGHTS["embedding_bags.t_genre.weight"]
    return torch.stack([
        torch.cat([user[1], genre[[0, 3, 5]].mean(0), genre[2]]),
        torch.cat([user[2], torch.zeros(4), genre[[1, 4]].mean(0)]),  # an empty bag pools to zeros
    ])


def test_a_mean_pooled_bag_is_the_mean_of_its_rows():
    ebc = EmbeddingBagCollection(tables=_tables({"genre": "mean"}))
    ebc.load_state_dict(WEIGHTS)
    out = ebc(_kjt())
    torch.testing.assert_close(torch.cat([out[n] for n in NAMES], dim=1), _expected())


def _sharded_pooling(sharding: dict, out_path: str) -> None:
    env = init_distributed("gloo")
    try:
        ebc = EmbeddingBagCollection(tables=_tables({"genre": "mean"}), device=torch.device("meta"))
        apply_table_optimizer([ebc], TableOptimizer("rowwise_adagrad", 0.1, 1e-8), env.device)
        plan, _ = plan_sharding(ebc, env, OmegaConf.create(sharding), 2)
        model = distribute(ebc, env, plan)
        load_full_state(model, WEIGHTS)
        with torch.no_grad():
            out = model(_kjt())
        torch.save(torch.cat([out[n] for n in NAMES], dim=1), out_path)
    finally:
        shutdown()


@pytest.mark.parametrize("sharding", ["table_wise", "data_parallel"])
def test_the_sharded_kernels_honour_mean_pooling(tmp_path, sharding):
    cfg = compose(f"sharding={sharding}")
    run_ranks(_sharded_pooling, 1, OmegaConf.to_container(cfg.sharding, resolve=True), str(tmp_path / "out.pt"))
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), _expected())


def test_shared_features_take_their_tables_pooling_and_a_bad_name_is_named():
    pooled = {t.name: t.pooling.value for t in _tables({"genre": "mean", "user": "sum"})}
    assert pooled == {"t_user": "SUM", "t_genre": "MEAN"}
    with pytest.raises(KeyError, match="embedding.pooling_per_feature names \\['userGenres'\\]"):
        _tables({"userGenres": "mean"})

"""Every shipped config composes, and a misspelt key or wrong type fails naming the key."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.hydra_config import CONFIGS, compose

# `experiment` holds whole jobs, added on top of the defaults (`+experiment=<name>`).
GROUPS = sorted(
    p.name for p in CONFIGS.iterdir()
    if p.is_dir() and p.name not in ("hydra", "experiment") and any(p.glob("*.yaml"))
)


def _options(group: str):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose(f"{group}={option}")
    assert group in cfg


@pytest.mark.parametrize("option", _options("experiment"))
def test_every_experiment_composes_and_builds_its_model_config(option):
    cfg = compose(f"+experiment={option}")
    assert cfg.model._target_ and cfg.data._target_


def test_default_config_builds_the_main_job_objects():
    cfg = compose("data.train_rows=10", "data.val_rows=10", "data.test_rows=10")
    source = instantiate(cfg.data)
    assert len(source.dense_names) == 13 and len(source.sparse_names) == 26
    assert cfg.model._target_.endswith("DeepCrossing")
    assert cfg.sharding.sharding_type == "table_wise"
    assert cfg.optimizer.sparse == "rowwise_adagrad"


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.batchsize=10", "trainer.batchsize"),
        ("model.num_residual_unit=3", "model.num_residual_unit"),
        ("data.zipf=1.2", "data.zipf"),
        ("embedding.dims=8", "embedding.dims"),
    ],
)
def test_misspelt_override_fails_with_its_name(override, key):
    with pytest.raises(ConfigCompositionException) as error:
        compose(override)
    assert key in str(error.value)


def test_misspelt_key_in_a_users_yaml_fails_with_its_name(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_model.yaml").write_text(
        "defaults:\n  - deep_crossing_schema\nnum_residual_unit: 5\n"
    )
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as error:
        compose(f"hydra.searchpath=[file://{tmp_path}]", "model=my_model")
    assert "num_residual_unit" in str(error.value) + str(error.value.__cause__)


def test_wrong_type_fails_with_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as error:
        compose("trainer.batch_size=large")
    assert "batch_size" in str(error.value) + str(error.value.__cause__)


@pytest.mark.parametrize("option", ["modulo", "qr", "vocab"])
def test_a_hashing_is_picked_alike_by_its_group_and_by_the_dotted_key(option):
    dotted = compose(f"embedding.hashing={option}", "embedding.dim=8")
    assert dotted == compose(f"embedding/hashing={option}", "embedding.dim=8")
    assert dotted.embedding.hashing._target_.split(".")[-2] == {"modulo": "hashing"}.get(option, option)


def test_the_dotted_hashing_key_keeps_the_options_keys_and_their_checks():
    cfg = compose("embedding.hashing=qr", "embedding.hashing.combine=product", "embedding.hashing.remainder_rows=7")
    assert (cfg.embedding.hashing.combine, cfg.embedding.hashing.remainder_rows) == ("product", 7)
    with pytest.raises(ConfigCompositionException) as error:
        compose("embedding.hashing=qr", "embedding.hashing.combin=product")
    assert "embedding.hashing.combin" in str(error.value)
    with pytest.raises(ConfigCompositionException, match="remainder_rows") as error:
        compose("embedding.hashing=qr", "embedding.hashing.remainder_rows=many")


def test_an_unknown_hashing_fails_listing_the_options():
    with pytest.raises(ConfigCompositionException) as error:
        compose("embedding.hashing=mch")
    assert "embedding/hashing/mch" in str(error.value)
    assert all(option in str(error.value) for option in ("modulo", "qr", "vocab"))

"""Every shipped config composes; a misspelt key, a wrong type or a choice outside a closed set
fails naming the key; options state only what differs from their schema."""

import json
from pathlib import Path

import pytest
import yaml
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.types import ShardingType

from ctr.config import Choice, ComputeKernel, Config, TableShardingType, register_configs
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


@pytest.mark.parametrize(
    "config_name,override,key,allowed",
    [
        ("config", "embedding.precision=fp64", "embedding.precision", "fp32, fp16"),
        ("config", "embedding.pooling=max", "embedding.pooling", "sum, mean"),
        ("config", "+embedding.pooling_per_feature.cat_0=max", "embedding.pooling_per_feature.cat_0", "sum, mean"),
        ("config", "embedding.hashing.combine=concat", "embedding.hashing.combine", "sum, product"),
        ("config", "comms.backward_precision=fp4", "comms.backward_precision", "fp32, fp16, bf16, fp8, int8"),
        ("config", "sharding.sharding_type=diagonal", "sharding.sharding_type", "data_parallel, table_wise, column_wise"),
        ("config", "optimizer.sparse=ftrl", "optimizer.sparse", "sgd, adagrad, rowwise_adagrad, adam"),
        ("config", "optimizer.wide.name=ftrl", "optimizer.wide.name", "sgd, adagrad, rowwise_adagrad, adam"),
        ("config", "optimizer.dense_schedule.decay=step", "optimizer.dense_schedule.decay", "none, linear, cosine"),
        ("config", "trainer.dense_precision=fp8", "trainer.dense_precision", "fp32, bf16"),
        ("config", "trainer.auc=roc", "trainer.auc", "exact, binned"),
        ("config", "trainer.best_metric=ndcg", "trainer.best_metric", "auc, accuracy, log_loss, normalized_entropy"),
        ("config", "distributed.backend=mpi", "distributed.backend", "auto, gloo, nccl"),
        ("throughput", "table_precision=int8", "table_precision", "fp32, fp16"),
        ("throughput", "dense_precision=fp16", "dense_precision", "fp32, bf16"),
        ("export", "precision=int2", "precision", "fp32, fp16, int8, int4"),
        ("predict", "on_bad_row=drop", "on_bad_row", "error, skip"),
        ("evaluate", "split=holdout", "split", "train, val, test"),
    ],
)
def test_a_wrong_choice_fails_at_composition_naming_the_key_and_the_allowed_values(config_name, override, key, allowed):
    overrides = [override, "embedding.hashing=qr"] if "hashing" in key else [override]
    with pytest.raises(ConfigCompositionException) as error:
        compose(*overrides, config_name=config_name)
    message = f"{error.value}\n{error.value.__cause__}"
    assert f"full_key: {key}\n" in message and f"expected one of [{allowed}" in message


def test_choices_compare_format_and_serialise_as_their_plain_strings():
    cfg = compose("embedding.precision=fp16", "sharding=mixed", "trainer.best_metric=log_loss")
    precision = cfg.embedding.precision
    assert precision == "fp16" and f"{precision}" == "fp16" and {"fp16": 2}[precision] == 2
    assert f"embedding.precision={precision!r}" == "embedding.precision='fp16'"
    # OmegaConf matches a given string against the member names; the code sees the values.
    assert all(member.name == member.value for choices in Choice.__subclasses__() for member in choices)
    assert OmegaConf.to_yaml(cfg).count("precision: fp16") == 1
    container = OmegaConf.to_container(cfg, resolve=True)
    assert json.loads(json.dumps(container))["trainer"]["best_metric"] == "log_loss"
    assert OmegaConf.create(container) == cfg  # as a launched rank rebuilds it
    hashing = instantiate(compose("embedding.hashing=qr", "embedding.hashing.combine=product").embedding.hashing,
                          num_embeddings_per_feature={"a": 10}, _convert_="all")
    assert hashing.combine == "product" and hashing.table_rows() == {"a": {"a@q": 3, "a@r": 4}}


def _schema_defaults(option_file: Path) -> dict:
    """The defaults of the schema an option's YAML extends (`defaults: [<name>_schema]`), or of
    its group's field of the job's schema."""
    relative = option_file.relative_to(CONFIGS)
    schema = next((d for d in (yaml.safe_load(option_file.read_text()) or {}).get("defaults", [])
                   if isinstance(d, str) and d.endswith("_schema")), None)
    if schema is not None:
        folder = relative.parent.as_posix()
        store = ConfigStore.instance().repo
        for part in ([] if folder == "." else folder.split("/")):
            store = store[part]
        return OmegaConf.to_container(store[f"{schema}.yaml"].node)
    return OmegaConf.to_container(OmegaConf.structured(Config)[relative.parent.as_posix().replace("/", ".")])


def _restated(values: dict, defaults: dict, prefix: str = "") -> list:
    restated = []
    for key, value in values.items():
        if key == "defaults" or key == "hydra" or key not in defaults:
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            restated += _restated(value, defaults[key], f"{prefix}{key}.")
        elif value == defaults[key]:
            restated.append(f"{prefix}{key}")
    return restated


# Options whose one value is what the option means (sharding=table_wise, comms=fp32) are left out.
@pytest.mark.parametrize("option_file", [
    *(CONFIGS / group / "default.yaml" for group in ("checkpoint", "distributed", "embedding", "optimizer", "trainer")),
    *sorted((CONFIGS / "model").glob("*.yaml")), *sorted((CONFIGS / "embedding" / "hashing").glob("*.yaml")),
    CONFIGS / "sharding" / "auto.yaml", CONFIGS / "throughput.yaml", CONFIGS / "export.yaml", CONFIGS / "evaluate.yaml",
], ids=lambda path: path.relative_to(CONFIGS).as_posix())
def test_an_option_sets_only_what_differs_from_its_schema(option_file):
    register_configs()
    values = yaml.safe_load(option_file.read_text()) or {}
    assert _restated(values, _schema_defaults(option_file)) == []


def test_the_sharding_choices_are_torchrecs_types_and_kernels():
    assert set(TableShardingType) == {t.value for t in ShardingType} - {ShardingType.GRID_SHARD.value}
    assert set(ComputeKernel) <= {k.value for k in EmbeddingComputeKernel}

"""The data configs' enumerated keys: a wrong choice fails when the config is composed,
naming the key and the allowed values; a right one reads as its plain string."""

from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException

from ctr.config import register_configs
from tests.hydra_config import CONFIGS, compose


def _compose_preprocess(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="preprocess", overrides=list(overrides))


def _message(error: pytest.ExceptionInfo) -> str:
    return f"{error.value} {error.value.__cause__}"


@pytest.mark.parametrize(
    "compose_with,overrides,key,allowed",
    [
        (compose, ["data=criteo", "data.split_by=days"], "data.split_by", ["ratio", "day", "preprocessed"]),
        (compose, ["data=movielens100k", "data.schema.split.by=time"], "data.schema.split.by",
         ["ratio", "timestamp", "files", "order"]),
        (compose, ["data=sparrowrecsys", "data.schema.dense.0.normalize=zscore"], "data.schema.dense[0].normalize",
         ["none", "standardize", "minmax"]),
        (_compose_preprocess, ["on_bad_row=drop"], "on_bad_row", ["error", "skip"]),
        (compose, ["data=movielens100k", "data.schema.split.val_by=last"], "data.schema.split.val_by",
         ["random", "order"]),
        (compose, ["data=movielens100k", "data.schema.other_columns=all"], "data.schema.other_columns",
         ["none", "categorical"]),
        (compose, ["data=movielens100k_temporal", "data.schema.derived.1.date_part=decade"],
         "data.schema.derived[1].date_part", ["year", "month", "day", "weekday", "hour"]),
        (compose, ["trainer.eval_every=step"], "trainer.eval_every", ["epoch"]),
        (_compose_preprocess, ["data=movielens100k", "data.schema.split.by=random"], "data.schema.split.by",
         ["ratio", "timestamp", "files", "order"]),
    ],
)
def test_a_wrong_choice_fails_at_composition_naming_the_key_and_the_choices(compose_with, overrides, key, allowed):
    with pytest.raises(ConfigCompositionException) as error:
        compose_with(*overrides)
    message = _message(error)
    assert key in message and f"expected one of [{', '.join(allowed)}]" in message


def test_a_wrong_choice_in_a_users_data_yaml_fails_naming_the_file_and_the_key(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_csv.yaml").write_text(
        "defaults:\n  - csv_schema\npath: out\nschema:\n  files: [a.csv]\n  label: {column: click}\n"
        "  dense:\n    - {column: price, normalize: log}\n"
    )
    with pytest.raises(ConfigCompositionException) as error:
        compose(f"hydra.searchpath=[file://{tmp_path}]", "data=my_csv")
    message = _message(error)
    # Hydra names the file and the key within the list entry being checked.
    assert "data/my_csv" in message and "normalize" in message
    assert "Invalid value 'log', expected one of [none, standardize, minmax]" in message


def test_the_chosen_values_compare_as_plain_strings():
    cfg = compose("data=movielens100k")
    assert cfg.data.schema.split.by == "timestamp" and cfg.data.schema.dense[0].normalize == "standardize"
    assert compose("data=criteo", "data.split_by=day").data.split_by == "day"
    assert _compose_preprocess("on_bad_row=skip").on_bad_row == "skip"

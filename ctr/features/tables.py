"""The embedding tables a data set's sparse features need, as TorchRec configs."""

from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType

from ctr.config import Pooling, TablePrecision

# FBGEMM's weights precision of each `embedding.precision`.
TABLE_DATA_TYPES = {TablePrecision.fp32: DataType.FP32, TablePrecision.fp16: DataType.FP16}
POOLING_TYPES = {Pooling.sum: PoolingType.SUM, Pooling.mean: PoolingType.MEAN}


def per_table_setting(
    sparse_names: Sequence[str], default, per_feature: Mapping, shared_tables: Mapping[str, Sequence[str]], setting: str,
) -> dict:
    """A table's setting per feature: the override under the feature's name, or under its
    shared table's name for the features of a shared table (which must agree), else `default`."""
    table_of = {feature: table for table, features in shared_tables.items() for feature in features}
    unknown = sorted(set(per_feature) - (set(sparse_names) - set(table_of)) - set(shared_tables))
    if unknown:
        raise KeyError(
            f"{setting} names {unknown}, which are neither sparse features "
            f"of the data ({list(sparse_names)}) nor shared tables ({list(shared_tables)}); "
            "features of a shared table take its setting, set under the table's name"
        )
    return {name: per_feature.get(table_of.get(name, name), default) for name in sparse_names}


def table_name(feature: str) -> str:
    return f"t_{feature}"


def named_tables(tables: Iterable[str]) -> Dict[str, str]:
    """The name a user gives each of a model's TorchRec `tables` → the table. A table is named as
    `embedding.*_per_feature` and the vector export name it: by its feature or shared table
    (`movie` for `t_movie`; `item@q` for a part under qr hashing). Tables of no feature
    (a wide part's first-order `wide_*`) have no such name.

    >>> named_tables(["t_movie", "wide_t_movie"])
    {'movie': 't_movie'}
    """
    prefix = table_name("")
    return {table[len(prefix):]: table for table in tables if table.startswith(prefix)}


def tables_by_name(tables: Iterable[str], names: Iterable[str], setting: str) -> Dict[str, str]:
    """Each of `names` (`named_tables`) → its TorchRec table among `tables`; an unknown name is
    an error naming `setting` and the known names."""
    known = named_tables(tables)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise KeyError(f"{setting} names {unknown}, which are not tables of the model; its tables: {sorted(known)}")
    return {name: known[name] for name in names}


def round4(x: float) -> int:
    """The nearest positive multiple of 4 (FBGEMM's fused kernels need dims in steps of 4)."""
    return max(4, 4 * round(x / 4))


def feature_dims(
    cardinality: Mapping[str, int],
    dim: int,
    dim_per_feature: Mapping[str, int],
    rule_k: Optional[float] = None,
    rule_min: int = 4,
    rule_max: int = 128,
) -> dict:
    """Each feature's dimension: its override, else the rule round4(k · cardinality^¼)
    clipped to [min, max] when `embedding.dim_rule.k` is set, else the global dim.

    FBGEMM's fused kernels need dimensions that are multiples of 4; a config that breaks
    this fails here with the offending key rather than deep inside the kernel.

    >>> feature_dims({"a": 10_000, "b": 16}, 16, {}, rule_k=2.0)
    {'a': 20, 'b': 4}
    """
    unknown = sorted(set(dim_per_feature) - set(cardinality))
    if unknown:
        raise KeyError(f"embedding.dim_per_feature names {unknown}, which are not sparse features of the data")
    dims = {}
    for name, rows in cardinality.items():
        if name in dim_per_feature:
            key, value = f"embedding.dim_per_feature.{name}", int(dim_per_feature[name])
        elif rule_k is not None:
            key, value = "embedding.dim_rule", min(max(round4(rule_k * rows**0.25), rule_min), rule_max)
        else:
            key, value = "embedding.dim", int(dim)
        if value <= 0 or value % 4:
            raise ValueError(f"{key}={value}: embedding dimensions must be positive multiples of 4")
        dims[name] = value
    return dims


def embedding_bag_configs(
    table_rows: Mapping[str, Mapping[str, int]],
    dims: Mapping[str, int],
    precision: str = "fp32",
    shared_tables: Mapping[str, Sequence[str]] = {},
    pooling: Mapping[str, str] = {},
) -> List[EmbeddingBagConfig]:
    """One table per KJT key of each feature (`table_rows[feature][key]` rows), of the
    feature's dimension, stored in `precision`, pooled as `pooling[feature]` says (sum
    or mean over a bag's ids; default sum).

    The features of a shared table (`{table: [feature, ...]}`, from the data) look up one
    table: their keys become that table's `feature_names` (per part, for hashings that
    split a feature: key `f@q` of feature `f` goes to table `t_<table>@q`).

    >>> [(c.name, c.feature_names) for c in embedding_bag_configs(
    ...     {"a": {"a": 10}, "g1": {"g1": 5}, "g2": {"g2": 5}}, {"a": 8, "g1": 8, "g2": 8}, "fp32", {"genre": ["g1", "g2"]})]
    [('t_a', ['a']), ('t_genre', ['g1', 'g2'])]
    """
    table_of = {feature: table for table, features in shared_tables.items() for feature in features}
    configs: Dict[str, EmbeddingBagConfig] = {}
    for feature, keys in table_rows.items():
        for key, rows in keys.items():
            name = table_name(table_of[feature] + key[len(feature):] if feature in table_of else key)
            config = configs.get(name)
            if config is None:
                configs[name] = EmbeddingBagConfig(
                    name=name, feature_names=[key], num_embeddings=rows, embedding_dim=dims[feature],
                    pooling=POOLING_TYPES[pooling.get(feature, Pooling.sum)], data_type=TABLE_DATA_TYPES[precision],
                )
            elif (config.num_embeddings, config.embedding_dim) != (rows, dims[feature]):
                raise ValueError(
                    f"shared table {table_of[feature]!r}: feature {feature!r} has {rows} rows of dim {dims[feature]}, "
                    f"{config.feature_names[0]!r} {config.num_embeddings} of dim {config.embedding_dim}; set "
                    f"embedding.num_embeddings_per_feature.{table_of[feature]} and give its features one dim "
                    "(a hashing that learns per-feature vocabularies cannot share tables)"
                )
            else:
                config.feature_names.append(key)
    return list(configs.values())

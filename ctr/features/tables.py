"""The embedding tables a data set's sparse features need, as TorchRec configs."""

from typing import List, Mapping, Sequence

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType


def table_name(feature: str) -> str:
    return f"t_{feature}"


def embedding_bag_configs(
    sparse_names: Sequence[str],
    table_sizes: Mapping[str, int],
    dim: int,
    dim_per_feature: Mapping[str, int],
) -> List[EmbeddingBagConfig]:
    """One sum-pooled table per sparse feature, of its table size and dimension.

    FBGEMM's fused kernels need dimensions that are multiples of 4; a config that breaks
    this fails here with the offending key rather than deep inside the kernel.
    """
    unknown = sorted(set(dim_per_feature) - set(sparse_names))
    if unknown:
        raise KeyError(f"embedding.dim_per_feature names {unknown}, which are not sparse features of the data")
    configs = []
    for name in sparse_names:
        feature_dim = int(dim_per_feature.get(name, dim))
        if feature_dim <= 0 or feature_dim % 4:
            key = f"embedding.dim_per_feature.{name}" if name in dim_per_feature else "embedding.dim"
            raise ValueError(f"{key}={feature_dim}: embedding dimensions must be positive multiples of 4")
        configs.append(
            EmbeddingBagConfig(
                name=table_name(name),
                feature_names=[name],
                num_embeddings=table_sizes[name],
                embedding_dim=feature_dim,
                pooling=PoolingType.SUM,
            )
        )
    return configs

"""Typed schema of the Hydra configuration; each dataclass mirrors one file in `configs/`.

Registering these with Hydra's ConfigStore makes a misspelt key, a wrong type or a choice
outside a closed set fail at start-up with the key's name, instead of being silently ignored.

A closed set of choices is a `StrEnum` whose member names are its values (OmegaConf
matches a config's string against the names): a member equals its plain string, formats
and reprs as it and looks it up in a dict keyed by strings, so code reading the config
compares with strings as before.
"""

import functools
import os
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum, auto
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from ctr.data.parallel_preprocess import PART_BYTES
from ctr.data.schema import SchemaConfig
from ctr.data.shard_writer import CHUNK_ROWS, SHARD_ROWS, BadRowPolicy
from ctr.data.shards import SHUFFLE_BUFFER, SplitBy


class Choice(StrEnum):
    """A closed set of choices; a member also reprs as its plain string, so a message that
    quotes it (`f"{key}={value!r}"`) reads `key='value'` whichever it was given."""

    def __repr__(self) -> str:
        return repr(self.value)


class TablePrecision(Choice):
    """`embedding.precision`: how tables are stored while training."""

    fp32 = auto()
    fp16 = auto()


class Pooling(Choice):
    """`embedding.pooling`: how a bag's rows become one vector."""

    sum = auto()
    mean = auto()


class QRCombine(Choice):
    """`embedding.hashing.combine`: how a feature's quotient and remainder vectors combine."""

    sum = auto()
    product = auto()


class CommsPrecision(Choice):
    """`comms.*_precision`: the encoding of pooled embeddings and their gradients between ranks."""

    fp32 = auto()
    fp16 = auto()
    bf16 = auto()
    fp8 = auto()
    int8 = auto()


class TableShardingType(Choice):
    """`sharding.sharding_type`: TorchRec's sharding types (its `ShardingType` values, grid aside)."""

    data_parallel = auto()
    table_wise = auto()
    column_wise = auto()
    row_wise = auto()
    table_row_wise = auto()
    table_column_wise = auto()


class ComputeKernel(Choice):
    """`sharding.tables.<table>.compute_kernel`: the TorchRec kernels ctr's models can run
    (its virtual-table kernels need a key-value setup they lack)."""

    dense = auto()
    fused = auto()
    fused_uvm = auto()
    fused_uvm_caching = auto()


class TableUpdate(Choice):
    """`embedding.update.<table>`: a table that no optimizer steps, or one stepped every
    `embedding.update_every_k` steps with the gradients of those steps summed."""

    frozen = auto()
    every_k_steps = auto()


class AucKind(Choice):
    """`trainer.auc`: every prediction kept and gathered (exact), or a fixed-size histogram per class (binned)."""

    exact = auto()
    binned = auto()


class Decay(Choice):
    """`optimizer.*_schedule.decay`: the learning rate's course after warm-up."""

    none = auto()
    linear = auto()
    cosine = auto()


class SparseOptimizer(Choice):
    """`optimizer.sparse`, `optimizer.wide.name`: FBGEMM's fused table optimizers ctr offers."""

    sgd = auto()
    adagrad = auto()
    rowwise_adagrad = auto()
    adam = auto()


class DensePrecision(Choice):
    """`trainer.dense_precision`: bf16 runs the dense tower under autocast (fp32 master weights)."""

    fp32 = auto()
    bf16 = auto()


class BestMetric(Choice):
    """`trainer.best_metric`: the validation metric that picks the best checkpoint."""

    auc = auto()
    accuracy = auto()
    log_loss = auto()
    normalized_entropy = auto()


class Backend(Choice):
    """`distributed.backend`: auto is NCCL where CUDA is present, gloo otherwise."""

    # Spelt out: a member named `auto` hides `enum.auto` from the members after it.
    auto = "auto"
    gloo = "gloo"
    nccl = "nccl"


class ExportPrecision(Choice):
    """`configs/export.yaml` `precision`: the tables' storage; fp16, int8 and int4 are TorchRec's
    quantized tables (int8/int4 row-wise, each row with an fp16 scale and bias)."""

    fp32 = auto()
    fp16 = auto()
    int8 = auto()
    int4 = auto()


class EvalEvery(Choice):
    """`trainer.eval_every`: validate at the end of every epoch (null: every `eval_every_steps`)."""

    epoch = auto()


class Split(Choice):
    """A data split."""

    train = auto()
    val = auto()
    test = auto()


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
    batch_size: int = 2048  # recommended per rank: trainer.batch_size's default
    # recommended: trainer.max_epochs's default. A second pass over the rows gained 0.0025 val AUC,
    # the first 0.87; the generator gives fresh rows (train_rows) cheaper than more passes.
    max_epochs: int = 2


@dataclass
class CriteoDataConfig:
    """`configs/data/criteo.yaml`: shards written by `launch/preprocess.py`, split by ratios or by day."""

    _target_: str = "ctr.data.shards.ShardSource"
    path: str = MISSING
    split_by: SplitBy = SplitBy.ratio
    train_ratio: float = 0.8
    val_ratio: float = 0.1
    train_days: List[int] = field(default_factory=lambda: list(range(23)))
    val_days: List[int] = field(default_factory=list)
    test_days: List[int] = field(default_factory=lambda: [23])
    shuffle_buffer: int = SHUFFLE_BUFFER
    seed: int = 0
    verify_checksums: bool = True  # each shard when this process first reads it (sizes: always)
    batch_size: int = 2048  # recommended per rank: trainer.batch_size's default
    max_epochs: int = 10  # recommended: trainer.max_epochs's default


@dataclass
class CsvDataConfig:
    """`configs/data/<name>.yaml` for a delimited data set: its `schema` (`ctr.data.schema`), and
    the shards at `path` that `launch/preprocess.py data=<name>` writes from it and training reads."""

    _target_: str = "ctr.data.tabular.csv_shards"
    path: str = MISSING
    schema: SchemaConfig = field(default_factory=SchemaConfig)
    shuffle_buffer: int = SHUFFLE_BUFFER
    seed: int = 0
    verify_checksums: bool = True  # each shard when this process first reads it (sizes: always)
    batch_size: int = 2048  # recommended per rank: trainer.batch_size's default
    max_epochs: int = 10  # recommended: trainer.max_epochs's default


@dataclass
class SkipGramDataConfig:
    """`configs/data/<name>_item2vec.yaml`: Item2Vec's skip-gram rows (`ctr.data.skipgram`) from
    users' sequences in `behaviour`, a CSV data set's config (its schema and split are read)."""

    _target_: str = "ctr.data.skipgram.SkipGramPairs"
    _recursive_: bool = False  # `behaviour` is read as a config, not built (its shards keep no timestamps)
    behaviour: Any = MISSING
    user_column: str = MISSING
    item_feature: str = MISSING  # a single-column sparse feature of behaviour.schema
    time_column: Optional[str] = None  # null: behaviour.schema.split.timestamp_column
    positives_only: bool = True  # only rows the schema's label rule makes 1
    window: int = 5  # context: items at most this far apart in a sequence (0: the whole sequence)
    negatives: int = 5  # sampled items per observed pair
    unigram_power: float = 0.75  # negatives drawn from train item counts ** this
    subsample: float = 1e-3  # word2vec's threshold t for dropping frequent items (0: off)
    seed: int = 0
    batch_size: int = 1024  # recommended per rank: trainer.batch_size's default
    max_epochs: int = 10  # recommended: trainer.max_epochs's default (validation: held-out pairs)


@dataclass
class PreprocessConfig:
    """`configs/preprocess.yaml`: one pass from Criteo TSV files to columnar shards, or, with
    `data=<name>` (a CSV data set), from the files its schema describes to `data.path`."""

    _target_: str = "ctr.data.preprocess.preprocess"
    input: str = MISSING
    output: str = MISSING
    on_bad_row: BadRowPolicy = BadRowPolicy.error
    log1p: bool = True  # integer features: empty → 0, negative → 0, then log(1+x)
    dense_columns: Optional[List[str]] = None  # null: all of I1..I13
    sparse_columns: Optional[List[str]] = None  # null: all of C1..C26
    shard_rows: int = SHARD_ROWS  # rows per shard
    chunk_rows: int = CHUNK_ROWS  # lines parsed at a time
    overwrite: bool = False  # true: removes the files a previous run in `output` listed (only those), then starts over
    progress_bar: bool = True
    workers: int = 1  # local processes writing parts at once (under torchrun: every rank is one worker)
    part_bytes: int = PART_BYTES  # a file is cut into parts of this many bytes (a gzipped file: one part)
    data: Optional[CsvDataConfig] = None


@dataclass
class ThroughputConfig:
    """`configs/throughput.yaml`: one point of the training-throughput grid of
    `benchmarks/throughput.py` (a multirun sweeps the grid), measured against a plain-PyTorch
    baseline and the machine's matmul and memory-copy limits in the same run."""

    # model_name, sharding_name, comms_name: choices of launch/train.py's model=, sharding= and
    # comms= groups, named apart from them (which Hydra would take for group overrides here)
    model_name: str = "deep_crossing"
    world_size: int = 1  # ranks (processes); CPU: gloo, GPU: NCCL, as launch/train.py picks
    batch_size: int = 2048  # per rank
    dim: int = 16
    rows: int = 100_000  # table rows per feature
    sharding_name: str = "table_wise"
    table_precision: TablePrecision = TablePrecision.fp32  # embedding.precision
    comms_name: str = "fp32"  # used when world_size > 1
    dense_precision: DensePrecision = DensePrecision.fp32  # trainer.dense_precision
    warmup_steps: int = 5
    steps: int = 20  # timed steps per repetition (ctr and baseline alike)
    repetitions: int = 3
    profile_steps: int = 5  # steps under torch.profiler for the step breakdown (0: none)
    overrides: List[str] = field(default_factory=list)  # more launch/train.py overrides, e.g. [model.residual_hidden_dim=512]


@dataclass
class ExportConfig:
    """`configs/export.yaml`: a trained run's model and feature pipeline as an inference artifact."""

    run_dir: str = MISSING
    checkpoint_path: Optional[str] = None
    precision: ExportPrecision = ExportPrecision.int8
    dense_precision: DensePrecision = DensePrecision.fp32  # the dense tower's stored weights and compute
    output: Optional[str] = None
    split: Split = Split.test  # the split whose AUC the manifest records
    batch_size: int = 8192  # rows per batch of that measurement


@dataclass
class EmbeddingExportConfig:
    """`configs/export_embeddings.yaml`: the named tables of a trained run's checkpoint,
    gathered from their shards, as vectors and keys (`ctr.features.vector_files`)."""

    run_dir: str = MISSING
    tables: List[str] = MISSING  # feature or shared-table names, as embedding.*_per_feature names them
    checkpoint_path: Optional[str] = None  # null: the run's best checkpoint, else its latest
    output: Optional[str] = None  # null: <run_dir>/vectors; one subdirectory per table
    nproc_per_node: int = 1  # ranks started when not under torchrun
    backend: Backend = Backend.auto


@dataclass
class NamesConfig:
    """`similar.names`: a delimited file giving a readable name to each raw key value."""

    path: Optional[str] = None  # null: keys print as they are
    key_column: int = 0
    name_column: int = 1
    delimiter: str = ","
    encoding: str = "utf-8"


class Metric(Choice):
    """`similar.metric`: cosine (vectors normalised first) or plain inner product."""

    cosine = auto()
    inner_product = auto()


class IndexKind(Choice):
    """`similar.index`: exact search (`IndexFlatIP`) or an inverted-file index (`IndexIVFFlat`)."""

    flat = auto()
    ivf = auto()


@dataclass
class SimilarConfig:
    """`configs/similar.yaml`: nearest neighbours of keys among exported vectors, with FAISS."""

    vectors: str = MISSING  # a directory export_embeddings wrote
    key: Optional[str] = None  # one raw value (e.g. a movie id), or
    keys_file: Optional[str] = None  # a file of them, one a line
    k: int = 10
    metric: Metric = Metric.cosine
    index: IndexKind = IndexKind.flat
    nlist: int = 100  # ivf: clusters
    nprobe: int = 10  # ivf: clusters searched per query
    # raw keys (meta.json keys: raw) of CSV data are hash_ids(namespace, value): null namespace is the
    # export's table, as the data hashes it; hashed false: keys and values are the same integers
    namespace: Optional[str] = None
    hashed: bool = True
    names: NamesConfig = field(default_factory=NamesConfig)
    output: Optional[str] = None  # a JSON file of the results (null: printed only)


@dataclass
class PredictConfig:
    """`configs/predict.yaml`: raw rows of the training layout → one prediction per row."""

    artifact: str = MISSING
    input: str = MISSING  # a file, or a directory of them (Criteo TSV, or the schema's CSV/TSV layout)
    output: str = MISSING  # .csv, or .parquet where pyarrow is installed
    key_columns: List[str] = field(default_factory=list)  # input columns copied beside each prediction
    on_bad_row: BadRowPolicy = BadRowPolicy.error  # skip: the row is written with an empty prediction
    batch_size: int = 4096  # rows per batch: bounds each process's memory
    workers: int = 1  # scoring processes
    overwrite: bool = False


@dataclass
class EvaluateConfig:
    """`configs/evaluate.yaml`: scores a split with a trained run's checkpoint or an exported model."""

    run_dir: Optional[str] = None
    checkpoint_path: Optional[str] = None
    exported: Optional[str] = None
    split: Split = Split.test
    batch_size: int = 8192


@dataclass
class DeepCrossingConfig:
    """`configs/model/deep_crossing.yaml`: Shan et al. 2016, residual units over stacked features.

    `dropout` (a probability) drops each residual unit's outputs while training; `batch_norm`
    normalises each unit's sum before its activation.
    """

    _target_: str = "ctr.models.deep_crossing.DeepCrossing"
    num_residual_units: int = 3
    residual_hidden_dim: int = 256
    dropout: float = 0.0
    batch_norm: bool = False


@dataclass
class Item2VecConfig:
    """`configs/model/item2vec.yaml`: Barkan & Koenigstein 2016, skip-gram with negative sampling."""

    _target_: str = "ctr.models.item2vec.Item2Vec"


@dataclass
class FMConfig:
    """`configs/model/fm.yaml`: Rendle 2010, a Factorization Machine over the feature embeddings
    (no options: its width is `embedding.dim`, one for every feature)."""

    _target_: str = "ctr.models.fm.FactorizationMachine"


@dataclass
class CrossConfig:
    """One entry of `model.wide.crosses`: the hashed cross of `features` into its own table,
    e.g. `{features: [cat_0, cat_1], num_embeddings: 100000}`."""

    features: List[str] = MISSING
    num_embeddings: int = MISSING


@dataclass
class WideConfig:
    """`model.wide`: the linear part's sparse features and crossed features."""

    features: Optional[List[str]] = None  # null: all of them
    crosses: List[CrossConfig] = field(default_factory=list)


@dataclass
class WideDeepConfig:
    """`configs/model/wide_deep.yaml`: Cheng et al. 2016, a linear model plus an MLP over embeddings.

    `dropout` (a probability) drops each MLP layer's outputs while training; `batch_norm`
    normalises each layer before its activation.
    """

    _target_: str = "ctr.models.wide_deep.WideAndDeep"
    hidden_dims: List[int] = field(default_factory=lambda: [256, 128])
    wide: WideConfig = field(default_factory=WideConfig)
    dropout: float = 0.0
    batch_norm: bool = False


@dataclass
class ModuloHashingConfig:
    """`configs/embedding/hashing/modulo.yaml`: row = id mod the feature's table size."""

    _target_: str = "ctr.features.hashing.ModuloHashing"


@dataclass
class QRHashingConfig:
    """`configs/embedding/hashing/qr.yaml`: quotient and remainder tables, combined by sum or product."""

    _target_: str = "ctr.features.qr.QRHashing"
    remainder_rows: Optional[int] = None  # m; null: ceil(sqrt(N)) per feature
    combine: QRCombine = QRCombine.sum


@dataclass
class VocabHashingConfig:
    """`configs/embedding/hashing/vocab.yaml`: ids seen `min_count` times get a row, others share one."""

    _target_: str = "ctr.features.vocab.VocabHashing"
    min_count: int = 2
    sample_rows: int = 1_000_000


@dataclass
class DimRuleConfig:
    """`embedding.dim_rule`: dim = round4(k · cardinality^¼) clipped to [min, max]; k null: off."""

    k: Optional[float] = None
    min: int = 4
    max: int = 128


@dataclass
class TableInitConfig:
    """One entry of `embedding.init`: where a table's starting rows come from, one of
    `checkpoint` (another ctr run's directory or one of its checkpoint directories; the
    table `table` of it, default the same name, same shape) or `vectors` (a vectors
    directory or a word2vec text file keyed by the data's raw ids, `ctr.features.vector_files`)."""

    checkpoint: Optional[str] = None
    table: Optional[str] = None
    vectors: Optional[str] = None


@dataclass
class EmbeddingConfig:
    """`configs/embedding/*.yaml`: hashing (`embedding.hashing=modulo|qr|vocab`, also spelt
    `embedding/hashing=...`), table rows, vector width (global, rule, per feature), storage
    precision (fp32, fp16), how a bag's ids are pooled (sum, mean; global or per feature,
    a shared table under its name), and per table (by that name too, as the vector export
takes it; `ctr.features.tables.named_tables`): pre-trained
    starting rows (`init`, `ctr.train.table_init`) and how often it is updated (`update`,
    `ctr.parallel.table_updates`)."""

    hashing: Any = MISSING
    dim: int = 16
    num_embeddings: int = 100_000
    num_embeddings_per_feature: Dict[str, int] = field(default_factory=dict)
    dim_per_feature: Dict[str, int] = field(default_factory=dict)
    dim_rule: DimRuleConfig = field(default_factory=DimRuleConfig)
    precision: TablePrecision = TablePrecision.fp32
    pooling: Pooling = Pooling.sum
    pooling_per_feature: Dict[str, Pooling] = field(default_factory=dict)
    # per table: pre-trained rows; untyped, like `sharding.tables`, so that
    # `+embedding.init.movie={checkpoint: <run dir>}` works; entries are checked against TableInitConfig
    init: Dict[str, Any] = field(default_factory=dict)
    # per table: frozen or every_k_steps; code reads it as embedding["update"] (`.update` is DictConfig's method)
    update: Dict[str, TableUpdate] = field(default_factory=dict)
    update_every_k: int = 10  # the k of every_k_steps tables


@dataclass
class CommsConfig:
    """`configs/comms/*.yaml`: precision of the pooled embeddings (forward) and their gradients
    (backward) sent between ranks (TorchRec qcomms): fp32, fp16, bf16, fp8 or int8."""

    forward_precision: CommsPrecision = CommsPrecision.fp32
    backward_precision: CommsPrecision = CommsPrecision.fp32


@dataclass
class TableShardingConfig:
    """One entry of `sharding.tables`: overrides the group's choice for one table.

    Unset fields keep the group's choice. `ranks` pins the shards: one rank for
    table-wise, one rank per column shard for the column-wise types. (`sharding.tables`
    itself is an untyped dict, so that `+sharding.tables.t_x.ranks=[1]` works on the
    command line; the planner checks each entry against this class.)
    """

    sharding_type: Optional[TableShardingType] = None
    compute_kernel: Optional[ComputeKernel] = None
    ranks: Optional[List[int]] = None
    min_partition: Optional[int] = None
    cache_load_factor: Optional[float] = None


@dataclass
class TopologyConfig:
    """`sharding.topology`: the cluster the planner plans for; null fields are this job's own.

    Set them to plan for a cluster other than the one running (`launch/plan.py`).
    """

    world_size: Optional[int] = None
    local_world_size: Optional[int] = None
    compute_device: Optional[str] = None


@dataclass
class StorageReservationConfig:
    """`sharding.storage_reservation`: TorchRec's policy for memory kept back from tables."""

    _target_: str = "torchrec.distributed.planner.storage_reservations.FixedPercentageStorageReservation"
    percentage: float = 0.15


@dataclass
class ShardingConfig:
    """`configs/sharding/*.yaml`: how TorchRec's planner places the tables.

    `sharding_type` None lets the planner choose among all types the device supports.
    `memory_budget_gb` caps each rank's device memory (HBM on GPUs, host memory on CPU).
    `min_partition` is the narrowest column shard the column-wise types may cut
    (TorchRec's default, 128, leaves narrower tables whole). `proposers` empty keeps
    TorchRec's default search; each entry is a `_target_` node of a TorchRec proposer.
    `compute_kernel` None lets the planner choose each table's kernel; `fused_uvm_caching`
    keeps tables in host memory behind a GPU cache of `cache_load_factor` × their rows
    (None: TorchRec's default, 0.2) and trains with TorchRec's prefetch pipeline (CUDA only).
    """

    sharding_type: Optional[TableShardingType] = TableShardingType.table_wise
    compute_kernel: Optional[ComputeKernel] = None
    cache_load_factor: Optional[float] = None
    memory_budget_gb: Optional[float] = None
    min_partition: Optional[int] = None
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    storage_reservation: StorageReservationConfig = field(default_factory=StorageReservationConfig)
    proposers: List[Any] = field(default_factory=list)
    tables: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    """A learning-rate schedule: linear warm-up, then decay to `final_fraction` of the base rate.

    `decay` is none, linear or cosine, over the run's planned steps (epochs × steps per epoch).
    """

    warmup_steps: int = 0
    decay: Decay = Decay.none
    final_fraction: float = 0.1


@dataclass
class TableOptimizerConfig:
    """`optimizer.wide`: the wide part's fused table optimizer (sgd, adagrad, rowwise_adagrad
    on CPU); a null field takes the sparse optimizer's (`sparse`, `sparse_lr`, `sparse_eps`,
    `sparse_weight_decay`)."""

    name: Optional[SparseOptimizer] = None
    lr: Optional[float] = None
    eps: Optional[float] = None
    weight_decay: Optional[float] = None


@dataclass
class OptimizerConfig:
    """`configs/optimizer/*.yaml`: fused in-backward optimizer for tables, Adam for the dense tower;
    `wide` for the wide part of Wide & Deep (its null fields: the sparse optimizer's).

    `sparse_weight_decay` is an L2 penalty on the table rows a batch uses (FBGEMM's
    `weight_decay_mode` L2, in the fused update: rows no batch reads do not decay; needs
    `rowwise_adagrad`). `dense_weight_decay` is Adam's L2 penalty on the dense weights.
    """

    sparse: SparseOptimizer = SparseOptimizer.rowwise_adagrad
    sparse_lr: float = 0.05
    sparse_eps: float = 1e-8
    sparse_weight_decay: float = 0.0
    dense_lr: float = 1e-3
    dense_weight_decay: float = 0.0
    wide: TableOptimizerConfig = field(default_factory=TableOptimizerConfig)
    sparse_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    dense_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class TrainerConfig:
    """`configs/trainer/*.yaml`: batch sizes, duration, evaluation and logging cadence.

    `batch_size` is per rank; by default the data config's recommendation (`data.batch_size`),
    as is `max_epochs` (`data.max_epochs`).
    `epochs` null (the default) trains to convergence where the data has a validation split:
    up to `max_epochs` epochs, validating after each, stopping early, and the test metrics
    come from the best checkpoint's weights (`checkpoint.keep_best`); where it has none, one
    epoch, as a number of epochs does everywhere. Validation runs every epoch with
    `eval_every: epoch`, else every `eval_every_steps` (null both: every epoch when training
    to convergence; at the end either way); `best_metric` picks the
    best checkpoint and drives early stopping after `early_stopping_patience` evaluations
    without improvement (null: never stop early). `dense_precision` bf16 runs the dense
    tower under autocast (fp32 master weights; tables keep `embedding.precision`). `auc`:
    exact (every prediction kept and gathered) or binned (a histogram of `auc_bins` bins per
    class: fixed memory, for large splits).
    """

    batch_size: int = II("data.batch_size")  # per rank
    eval_batch_size: int = 8192  # per rank
    reader_workers: int = 0  # processes building training batches per rank (0: a background thread)
    epochs: Optional[int] = None  # null: to convergence (up to max_epochs) with a validation split, else 1
    max_epochs: int = II("data.max_epochs")
    max_steps: Optional[int] = None
    log_every_steps: int = 50
    progress_bar: bool = True
    eval_every: Optional[EvalEvery] = None
    eval_every_steps: Optional[int] = None
    best_metric: BestMetric = BestMetric.auc
    early_stopping_patience: Optional[int] = 2
    tensorboard: bool = True  # scalars in <run dir>/tensorboard
    dense_precision: DensePrecision = DensePrecision.fp32
    auc: AucKind = AucKind.exact
    auc_bins: int = 65536


@dataclass
class CheckpointConfig:
    """`configs/checkpoint/*.yaml`: sharded checkpoints with torch.distributed.checkpoint.

    `dir` null is `<run dir>/checkpoints`; `every_steps` null saves only at the end of
    training; `keep_best` also keeps the best by `trainer.best_metric`, in `<dir>/best`.
    `resume`: auto (the latest complete checkpoint in `dir`, if any), none, or a checkpoint
    directory's path (so a string, not a closed set). `weights_only` loads the model alone
    (e.g. into another sharding plan) and starts optimizers afresh. `resume=auto` refuses a
    checkpoint written under a different config unless every key that differs is in
    `allow_config_change` (a key or a parent: `[trainer.epochs]` to train on, `[optimizer]`
    to fine-tune weights).
    """

    dir: Optional[str] = None
    every_steps: Optional[int] = None
    keep_last: int = 2
    keep_best: bool = True
    resume: str = "auto"
    weights_only: bool = False
    allow_config_change: List[str] = field(default_factory=list)


@dataclass
class DistributedConfig:
    """`configs/distributed/*.yaml`: process layout and communication backend."""

    nproc_per_node: int = 2  # ranks `python launch/train.py` starts; torchrun sets its own
    backend: Backend = Backend.auto
    seed: int = 1234


@dataclass
class Config:
    """`configs/config.yaml`: the whole job."""

    data: Any = MISSING
    model: Any = MISSING
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    comms: CommsConfig = field(default_factory=CommsConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def run_name() -> str:
    """The run directory's name: torchrun's run id when under torchrun, else the time and a
    random suffix, so two jobs started in the same second get different directories.

    Every rank, and every restart of a job under `torchrun --max-restarts`, gets the same
    name, so all ranks write to one directory and a restarted job finds its checkpoints.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return f"torchrun-{run_id[:8]}" if run_id != "none" else f"{time.strftime('%H-%M-%S')}-{secrets.token_hex(3)}"


@functools.lru_cache(maxsize=None)
def run_dir(parent: str) -> str:
    """`<parent>/<run_name()>`, created here, exclusively unless under torchrun (whose ranks share it).

    Cached: Hydra may resolve `hydra.run.dir` more than once, and every time it is this job's.
    """
    path = Path(parent) / run_name()
    try:
        path.mkdir(parents=True, exist_ok="TORCHELASTIC_RUN_ID" in os.environ)
    except FileExistsError:
        raise FileExistsError(f"run directory {path} already exists: it belongs to another job") from None
    return str(path)


# Config groups nested in another group's node. Hydra picks their options only with `/`
# (`embedding/hashing=qr`); `embedding.hashing=qr` would set the node to the string "qr".
NESTED_GROUPS = ("embedding/hashing",)


def group_overrides(overrides: Sequence[str]) -> List[str]:
    """Command-line overrides with a nested group's dotted spelling turned into Hydra's group override.

    `embedding.hashing=qr` then composes exactly as `embedding/hashing=qr` (the option's
    file, its schema, sweeps such as `embedding.hashing=modulo,qr`); keys under the
    group's node are left alone.

    >>> group_overrides(["embedding.hashing=qr", "embedding.hashing.combine=product", "-m"])
    ['embedding/hashing=qr', 'embedding.hashing.combine=product', '-m']
    """
    dotted = {group.replace("/", ".") + "=": group + "=" for group in NESTED_GROUPS}
    canonical = []
    for override in overrides:
        for prefix, group in dotted.items():
            if override.startswith(prefix):
                override = group + override[len(prefix):]
        canonical.append(override)
    return canonical


def register_configs() -> None:
    """Registers the schemas: the whole job, and one per option of the untyped groups.

    `data` and `model` hold different dataclasses per option, so each option's YAML
    extends its schema (`defaults: [<name>_schema]`) to get the same key checking.
    """
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    OmegaConf.register_new_resolver("ctr_run_dir", run_dir, replace=True)
    # Under torchrun every rank starts the Hydra app; only rank 0 writes the resolved config.
    OmegaConf.register_new_resolver(
        "ctr_rank0_only", lambda value: value if os.environ.get("RANK", "0") == "0" else None, replace=True
    )
    store.store(group="data", name="synthetic_schema", node=SyntheticDataConfig)
    store.store(group="data", name="criteo_schema", node=CriteoDataConfig)
    store.store(group="data", name="csv_schema", node=CsvDataConfig)
    store.store(group="data", name="skipgram_schema", node=SkipGramDataConfig)
    store.store(name="preprocess_schema", node=PreprocessConfig)
    store.store(name="export_schema", node=ExportConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="throughput_schema", node=ThroughputConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="export_embeddings_schema", node=EmbeddingExportConfig)
    store.store(name="similar_schema", node=SimilarConfig)
    store.store(group="model", name="deep_crossing_schema", node=DeepCrossingConfig)
    store.store(group="model", name="wide_deep_schema", node=WideDeepConfig)
    store.store(group="model", name="item2vec_schema", node=Item2VecConfig)
    store.store(group="model", name="fm_schema", node=FMConfig)
    for name, node in (("modulo", ModuloHashingConfig), ("qr", QRHashingConfig), ("vocab", VocabHashingConfig)):
        store.store(group="embedding/hashing", name=f"{name}_schema", node=node)

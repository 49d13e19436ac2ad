"""Tables updated less often than every step: `embedding.update.<table>=frozen|every_k_steps`.

Why each mode is built the way it is, on TorchRec 1.8 / FBGEMM 1.8:

- **frozen**: the table keeps its planned sharding and fused kernel, and gets a TBE of its
  own (TorchRec groups tables into FBGEMM kernels by their fused optimizer settings) whose
  optimizer is SGD at rate 0. FBGEMM's training kernels always update in the backward
  pass; the update-free `OptimType.NONE` runs on CUDA only and hands gradients back
  instead. A frozen table's lookup cannot leave autograd either: a rank whose lookups all
  need no gradient skips the backward all-to-all that the other ranks' tables wait for.
  So its backward is FBGEMM's sparse pass over the batch's rows only (no dense gradient),
  and SGD at rate 0 writes w − 0·g = w: the weights stay bitwise unchanged. A frozen
  data-parallel table (dense kernel: no fused update) is held by `Frozen`, which clears
  its gradient and never steps.
- **every_k_steps**: accumulating gradients needs a kernel that materialises them, and
  FBGEMM's fused kernels apply each step's update inside the backward pass. TorchRec 1.8's
  sharder offers its unfused (dense) kernel for data-parallel tables only, so such a table
  is planned data-parallel with the dense kernel (`forced_data_parallel`): replicated on
  every rank, its gradient all-reduced by DDP every step and summed over k steps by
  `EveryKSteps`, which applies the group's optimizer once every k steps. This suits the
  tables it is meant for (pre-trained item or user vectors that change slowly) as long as
  a replica fits each rank.
"""

from typing import Any, Collection, Dict, Mapping

from torchrec.optim.keyed import KeyedOptimizer, OptimizerWrapper

from ctr.config import TableUpdate
from ctr.features.tables import tables_by_name

# The config key, read by item: `cfg.embedding.update` is DictConfig's own `update` method.
UPDATE_KEY = "update"


def table_updates(updates: Mapping[str, Any], every_k: int, tables: Collection[str]) -> Dict[str, TableUpdate]:
    """`embedding.update`, its tables named as `ctr.features.tables.tables_by_name` says, checked
    against the model's `tables` (and `embedding.update_every_k` where a table is every_k_steps);
    keyed by the model's table names."""
    named = tables_by_name(tables, list(updates), "embedding.update")
    parsed = {}
    for name, mode in updates.items():
        if mode not in list(TableUpdate):
            raise ValueError(f"embedding.update.{name}={mode!r}: expected one of {[str(m) for m in TableUpdate]}")
        parsed[named[name]] = TableUpdate(mode)
    if TableUpdate.every_k_steps in parsed.values() and (isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1):
        raise ValueError(f"embedding.update_every_k={every_k!r}: expected a positive number of steps")
    return parsed


def forced_data_parallel(updates: Mapping[str, TableUpdate]) -> list:
    """The tables the planner must make data-parallel with the dense kernel: the every_k_steps ones."""
    return sorted(table for table, mode in updates.items() if mode == TableUpdate.every_k_steps)


def parameter_table(parameter_name: str) -> str:
    """The table a collection's parameter holds: `...embedding_bags.<table>.weight` → `<table>`."""
    return parameter_name.split(".")[-2]


class EveryKSteps(OptimizerWrapper):
    """Steps `optimizer` on every k-th call of `step`, with the gradients of those k steps summed.

    The train pipeline calls `zero_grad` before every step's backward; it is held back
    until after a real step, so the gradients accumulate in between. A resumed run starts
    a fresh window (accumulated gradients are not in checkpoints).
    """

    def __init__(self, optimizer: KeyedOptimizer, every: int) -> None:
        super().__init__(optimizer)
        self.every = every
        self.calls = 0

    def zero_grad(self, set_to_none: bool = False) -> None:
        if self.calls % self.every == 0:
            super().zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> None:
        self.calls += 1
        if self.calls % self.every == 0:
            super().step(closure)


class Frozen(OptimizerWrapper):
    """Holds frozen tables that have no fused kernel (data-parallel): clears their gradients, never steps."""

    def step(self, closure: Any = None) -> None:
        return None

"""Quantized communication of pooled embeddings (TorchRec qcomms) from `comms.*`.

The forward all-to-all sends pooled embeddings and the backward sends their gradients;
each can be encoded in a lower precision by FBGEMM's codecs (`CommsPrecision`, checked by
the config schema). Not every precision runs everywhere, and TorchRec itself silently swaps
some (bf16 → fp16 on gloo), so a precision the device cannot run fails here, at start-up,
naming the config key. TorchRec also swaps fp8 for fp16 (forward) and bf16 (backward) in the reduce-scatter of
row-wise tables, which has no fp8: that runs, so it is said at start-up and counted as sent.
"""

import logging
from typing import Dict, Mapping, Optional, Tuple

import torch
from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
from torchrec.distributed.types import CommOp, QuantizedCommCodecs, ShardingPlan

from ctr.config import CommsPrecision

log = logging.getLogger(__name__)

# Precisions that do not run on CPU/gloo on this stack (tried end to end on 2 ranks), and why.
CPU_UNSUPPORTED = {
    "bf16": "TorchRec sends fp16 instead on gloo, silently",
    "fp8": "FBGEMM's fp8 codec fails on the flat all-to-all buffer on CPU (FloatToHFP8Quantized wants 2-D input)",
}
# Bytes per element on the wire (int8 and fp8 add a small per-row scale, not counted).
WIRE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
ALL_TO_ALL = CommOp.POOLED_EMBEDDINGS_ALL_TO_ALL.name
REDUCE_SCATTER = CommOp.POOLED_EMBEDDINGS_REDUCE_SCATTER.name
# The collectives that carry each sharding type's pooled embeddings (TorchRec's output dists):
# row shards hold partial sums, reduce-scattered; table-row-wise reduce-scatters within a node,
# then all-to-alls across nodes. Data-parallel tables send no embeddings (their gradient is
# all-reduced in fp32 with the dense tower's).
OUTPUT_COMMS: Dict[str, Tuple[str, ...]] = {
    "table_wise": (ALL_TO_ALL,),
    "column_wise": (ALL_TO_ALL,),
    "table_column_wise": (ALL_TO_ALL,),
    "row_wise": (REDUCE_SCATTER,),
    "table_row_wise": (REDUCE_SCATTER, ALL_TO_ALL),
    "data_parallel": (),
}


def check_comms(comms: Mapping, device_type: str) -> None:
    """Raises, naming the key, for a precision not runnable on `device_type`."""
    for key in ("forward_precision", "backward_precision"):
        precision = comms[key]
        if device_type == "cpu" and precision in CPU_UNSUPPORTED:
            allowed = [p for p in CommsPrecision if p not in CPU_UNSUPPORTED]
            raise ValueError(
                f"comms.{key}={precision!r} cannot run on CPU/gloo ({CPU_UNSUPPORTED[precision]}); "
                f"on CPU use one of {allowed}"
            )


def qcomm_codecs(comms: Mapping, device: torch.device) -> Optional[Dict[str, QuantizedCommCodecs]]:
    """The sharders' codec registry for `comms` (None: plain fp32, no codecs)."""
    check_comms(comms, device.type)
    config = QCommsConfig(
        forward_precision=CommType(comms["forward_precision"]),
        backward_precision=CommType(comms["backward_precision"]),
    )
    return get_qcomm_codecs_registry(config, device=device)


def sent_precisions(registry: Optional[Dict[str, QuantizedCommCodecs]]) -> Dict[str, Dict[str, str]]:
    """What each collective really sends, {op: {"forward": p, "backward": p}}, read from the
    codecs TorchRec built (which may differ from the config: see the module doc)."""
    if not registry:
        return {op: {"forward": "fp32", "backward": "fp32"} for op in (ALL_TO_ALL, REDUCE_SCATTER)}
    return {
        op: {"forward": registry[op].forward._comm_precision.value, "backward": registry[op].backward._comm_precision.value}
        for op in (ALL_TO_ALL, REDUCE_SCATTER)
    }


def wire_bytes(comms: Mapping, device: torch.device) -> Dict[str, Dict[str, int]]:
    """Bytes per value each collective sends for `comms` on `device`, {op: {"forward": n, "backward": n}}."""
    return {
        op: {direction: WIRE_BYTES[precision] for direction, precision in sent.items()}
        for op, sent in sent_precisions(qcomm_codecs(comms, device)).items()
    }


def substituted_precisions(
    plan: ShardingPlan, registry: Optional[Dict[str, QuantizedCommCodecs]]
) -> Dict[str, dict]:
    """The plan's tables whose embeddings TorchRec sends in another precision than asked,
    by sharding type: {type: {"tables": [...], "asked": {...}, "sent": {...}}}."""
    sent = sent_precisions(registry)
    asked = sent[ALL_TO_ALL]  # the all-to-all codecs are built as configured
    found: Dict[str, dict] = {}
    for module_plan in plan.plan.values():
        for table, sharding in module_plan.items():
            for op in OUTPUT_COMMS[sharding.sharding_type]:
                if sent[op] != asked:
                    entry = found.setdefault(sharding.sharding_type, {"tables": [], "asked": asked, "sent": sent[op]})
                    entry["tables"].append(table)
    return found


def warn_substituted_precisions(plan: ShardingPlan, registry: Optional[Dict[str, QuantizedCommCodecs]]) -> None:
    """Says at start-up which tables' embeddings are not sent in the configured precision."""
    for sharding_type, entry in substituted_precisions(plan, registry).items():
        asked, sent = entry["asked"], entry["sent"]
        log.warning(
            "comms: %s tables (%s) send forward %s / backward %s, not the configured %s / %s: TorchRec's "
            "reduce-scatter has no %s codec and substitutes it; comms_bytes_per_step counts what is sent",
            sharding_type, ", ".join(entry["tables"]), sent["forward"], sent["backward"],
            asked["forward"], asked["backward"],
            "/".join(sorted({asked[d] for d in asked if asked[d] != sent[d]})),
        )

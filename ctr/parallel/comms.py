"""Quantized communication of pooled embeddings (TorchRec qcomms) from `comms.*`.

The forward all-to-all sends pooled embeddings and the backward sends their gradients;
each can be encoded in a lower precision by FBGEMM's codecs (`CommsPrecision`, checked by
the config schema). Not every precision runs everywhere, and TorchRec itself silently swaps
some (bf16 → fp16 on gloo), so a precision the device cannot run fails here, at start-up,
naming the config key.
"""

from typing import Dict, Mapping, Optional

import torch
from torchrec.distributed.fbgemm_qcomm_codec import CommType, QCommsConfig, get_qcomm_codecs_registry
from torchrec.distributed.types import QuantizedCommCodecs

from ctr.config import CommsPrecision

# Precisions that do not run on CPU/gloo on this stack (tried end to end on 2 ranks), and why.
CPU_UNSUPPORTED = {
    "bf16": "TorchRec sends fp16 instead on gloo, silently",
    "fp8": "FBGEMM's fp8 codec fails on the flat all-to-all buffer on CPU (FloatToHFP8Quantized wants 2-D input)",
}
# Bytes per element on the wire (int8 and fp8 add a small per-row scale, not counted).
WIRE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


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

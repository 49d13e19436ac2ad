"""Optimizer-state precision: what FBGEMM 1.8 honours, and ctr's start-up check."""

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen

from ctr.parallel.optimizers import SPARSE_OPTIMIZERS, check_state_precision


def _state_bytes(optimizer, location, compute, device, state_dtypes=None) -> int:
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(100, 8, location, compute)], optimizer=optimizer, optimizer_state_dtypes=state_dtypes, device=device,
    )
    return sum(b.numel() * b.element_size() for name, b in tbe.named_buffers() if name.startswith("momentum") and b.is_floating_point())


def test_fbgemm_honours_a_state_precision_only_for_a_cuda_only_optimizer():
    """The facts ctr's start-up check states. If an FBGEMM upgrade changes them, this fails:
    then `optimizer.state_precision` can offer more than fp32."""
    meta = torch.device("meta")  # builds a CUDA kernel's buffers without a GPU
    gpu = (EmbOptimType.PARTIAL_ROWWISE_ADAM, EmbeddingLocation.DEVICE, ComputeDevice.CUDA, meta)
    fp16 = {"momentum1": SparseType.FP16, "momentum2": SparseType.FP16}
    assert _state_bytes(*gpu, fp16) * 2 == _state_bytes(*gpu) == (100 * 8 + 100) * 4
    with pytest.raises(AssertionError, match="is not supported in CPU mode"):
        SplitTableBatchedEmbeddingBagsCodegen(
            [(100, 8, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=EmbOptimType.PARTIAL_ROWWISE_ADAM
        )
    for optimizer in (EmbOptimType.EXACT_ROWWISE_ADAGRAD, EmbOptimType.EXACT_ADAGRAD, EmbOptimType.ADAM):
        with pytest.raises(AssertionError, match="optimizer_state_dtypes option is only supported for"):
            _state_bytes(optimizer, EmbeddingLocation.DEVICE, ComputeDevice.CUDA, meta, fp16)


@pytest.mark.parametrize("sparse", sorted(SPARSE_OPTIMIZERS))
def test_a_state_precision_other_than_fp32_fails_naming_the_key_and_what_works(sparse):
    check_state_precision("fp32", sparse)
    with pytest.raises(ValueError, match=rf"optimizer.state_precision='bf16'.*optimizer.sparse='{sparse}'.*optimizer.state_precision=fp32"):
        check_state_precision("bf16", sparse)
    with pytest.raises(ValueError, match=r"optimizer.state_precision='int4': expected one of \['fp32', 'fp16', 'bf16'\]"):
        check_state_precision("int4", sparse)

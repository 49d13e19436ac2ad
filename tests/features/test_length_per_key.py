"""Every hashing keeps the per-key lengths that `from_lengths_sync` cached on the raw batch.

A KJT without them recomputes them from its lengths when TorchRec's input distribution asks,
which on CUDA is a device-to-host copy and a wait in every step.
"""

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.crossing import CrossedHashing, parse_crosses
from ctr.features.hashing import ModuloHashing
from ctr.features.qr import QRHashing
from ctr.features.vocab import VocabHashing
from tests.features.test_vocab import _Ids

HASHINGS = {
    "modulo": lambda: ModuloHashing({"a": 10, "b": 10}),
    "qr": lambda: QRHashing({"a": 10, "b": 10}, remainder_rows=4, combine="sum"),
    "vocab": lambda: VocabHashing({"a": 10, "b": 10}, _Ids(a=[5, 5, 9], b=[3, 3, 4]), min_count=1, sample_rows=100),
    "crossed": lambda: CrossedHashing(
        ModuloHashing({"a": 10, "b": 10}), parse_crosses([{"features": ["a", "b"], "num_embeddings": 50}], ["a", "b"])),
}


@pytest.mark.parametrize("name", sorted(HASHINGS))
def test_hashed_batch_carries_its_length_per_key(name):
    # rows: a=[5, 9], b=[3] | a=[12], b=[4, 3, 8]
    raw = KeyedJaggedTensor.from_lengths_sync(
        ["a", "b"], torch.tensor([5, 9, 12, 3, 4, 3, 8]), torch.tensor([2, 1, 1, 3], dtype=torch.int32))
    hashed = HASHINGS[name]().hash_features(raw)
    assert hashed._length_per_key is not None, "length_per_key would be read back from the device every step"
    recomputed = KeyedJaggedTensor(keys=hashed.keys(), values=hashed.values(), lengths=hashed.lengths())
    assert hashed._length_per_key == recomputed.length_per_key()
    assert hashed.offset_per_key() == recomputed.offset_per_key()

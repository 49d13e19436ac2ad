"""Reading a torch.distributed.checkpoint (DCP) checkpoint without running code from it.

DCP stores its index, `.metadata`, as a plain pickle and reads non-tensor entries with
`torch.load(weights_only=False)`: a crafted checkpoint could run code on the machine that
loads it. Here `.metadata` goes through an unpickler that builds only DCP's own metadata
classes, and non-tensor entries load with `weights_only=True`.
"""

import io
import pickle
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any, Dict

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.planner import ReadItem

# Every class a `.metadata` written by DCP's FileSystemWriter and DefaultSavePlanner holds.
_METADATA_CLASSES = (
    dcp_metadata.Metadata,
    dcp_metadata.ChunkStorageMetadata,
    dcp_metadata.TensorStorageMetadata,
    dcp_metadata.TensorProperties,
    dcp_metadata.BytesStorageMetadata,
    dcp_metadata.StorageMeta,
    dcp_metadata.MetadataIndex,
    dcp_metadata._MEM_FORMAT_ENCODING,
    _StorageInfo,
    torch.Size,
    PosixPath,
    PurePosixPath,
)
_ALLOWED = {(cls.__module__, cls.__qualname__) for cls in _METADATA_CLASSES} | {("torch.serialization", "_get_layout")}


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata: its dataclasses, `torch.Size`, dtypes and layouts, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not one of DCP's metadata classes")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with `.metadata` read by `MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            try:
                metadata = MetadataUnpickler(stream).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
                raise pickle.UnpicklingError(f"{path}: refused as checkpoint metadata: {error}") from error
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise pickle.UnpicklingError(f"{path}: holds a {type(metadata).__name__}, not DCP metadata")
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner with non-tensor entries read by `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def load_state(state: Dict[str, Any], path: Path) -> None:
    """`dcp.load` of `path` into `state` in place, through the safe reader and planner.

    The metadata is read once beforehand so that a refusal surfaces as itself, not folded
    into DCP's fallback to per-rank metadata files."""
    reader = SafeFileSystemReader(str(path))
    reader.read_metadata()
    dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner())

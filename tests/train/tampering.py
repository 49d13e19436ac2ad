"""What an attacker, or a bad disk, does to a file ctr reads: for tests that ctr refuses it."""

import json
import os
from pathlib import Path

from ctr.train.checkpoint import COMPLETE, sha256_file


class MakesMarker:
    """A harmless stand-in for malicious code: unpickling it creates the directory `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def rehash(path: Path) -> None:
    """Records a checkpoint's current files' sha256 in its COMPLETE, as an attacker who edits
    COMPLETE too would: the sha256 guards against damage, not against a forger."""
    record = json.loads((path / COMPLETE).read_text())
    record["files"] = {name: sha256_file(path / name) for name in record["files"]}
    (path / COMPLETE).write_text(json.dumps(record))

"""What a forger does to an artifact: for tests that loading refuses it, or runs nothing from it."""

import json
from pathlib import Path

from ctr.train.checkpoint import sha256_file


def resign(artifact: Path) -> None:
    """Records the artifact's current files in its manifest, as a forger who edits the manifest
    too would: the sha256s guard against damage, not against a forger."""
    path = artifact / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = {name: {"bytes": (artifact / name).stat().st_size, "sha256": sha256_file(artifact / name)}
                         for name in manifest["files"]}
    path.write_text(json.dumps(manifest))

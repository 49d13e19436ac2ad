"""A loaded artifact that scores rows in this process: what a service embeds."""

import json
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import torch

from ctr.data.rows import Rows, rows_to_batch
from ctr.data.shard_writer import BadLine, BadRowPolicy
from ctr.inference.pipeline import Chunk, FeaturePipeline, feature_pipeline
from ctr.train.export import PIPELINE_FILE, SIDE_TABLES, Artifact, load_artifact, verify_artifact


class BadRowError(ValueError):
    """A row that cannot be scored under on_bad_row=error; the message names its input, line and problem."""


class Predictor:
    """An artifact's model and feature pipeline: raw rows in, click probabilities out.

    >>> predictor = load("outputs/export_int8")                       # doctest: +SKIP
    >>> predictor.predict([{"I1": "3", "C1": "68fd1e64"}])             # doctest: +SKIP
    array([0.2312...], dtype=float32)
    """

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.pipeline = feature_pipeline(artifact.pipeline, artifact.directory / SIDE_TABLES)

    def predict(self, rows, on_bad_row: str = BadRowPolicy.error) -> np.ndarray:
        """Probabilities [n] of a list of dicts or a DataFrame (column → value as the training
        files write it; the label may be left out). on_bad_row=skip: NaN for a row that does not parse."""
        records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
        return self.score(self.pipeline.from_dicts(records), on_bad_row)[0]

    def score(self, chunk: Chunk, on_bad_row: str = BadRowPolicy.error) -> Tuple[np.ndarray, List[BadLine]]:
        """Probabilities of a chunk's records (NaN where one did not parse) and the problems of those."""
        parsed = self.pipeline.parse(chunk)
        if parsed.problems and BadRowPolicy(on_bad_row) == BadRowPolicy.error:
            first = parsed.problems[0]
            where = f"{chunk.origin}:{first.line}" if chunk.origin != "rows" else f"row {first.line}"
            raise BadRowError(f"{where}: {first.message} (on_bad_row=error; on_bad_row=skip scores such rows as empty)")
        probabilities = np.full(len(chunk.records), np.nan, np.float32)
        probabilities[parsed.clean] = self.predict_rows(parsed.rows)
        return probabilities, parsed.problems

    def predict_rows(self, rows: Rows) -> np.ndarray:
        """Probabilities of rows already in model form (as a shard or a RowSource gives them)."""
        if not len(rows):
            return np.zeros(0, np.float32)
        batch = self.artifact.hashing(rows_to_batch(rows, self.pipeline.sparse_names))
        with torch.no_grad():
            _, (_, logits, _) = self.artifact.task(batch)
        return torch.sigmoid(logits).numpy()


def load_pipeline(artifact: Union[str, Path]) -> FeaturePipeline:
    """The artifact's feature pipeline alone (its files verified): what a process that only reads rows needs."""
    directory = Path(artifact)
    verify_artifact(directory)
    return feature_pipeline(json.loads((directory / PIPELINE_FILE).read_text()), directory / SIDE_TABLES)


def load(artifact: Union[str, Path]) -> Predictor:
    """The artifact at `artifact`, verified against its manifest, ready to `predict`."""
    return Predictor(load_artifact(Path(artifact)))

"""Raw values (a movie id as the data file writes it) ↔ the keys of exported vectors, and
their readable names.

An export keeps raw ids as the data stores them: for CSV data the hashed id of the value in
its table's namespace (`ctr.data.tabular.hash_ids(table, value)`), so a value is hashed
the same way to be looked up; an export keyed by row takes the row number itself.
"""

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ctr.data.tabular import hash_ids


class KeyIndex:
    """Row of each key of an export, and the raw value and name of each key where known."""

    def __init__(self, keys: np.ndarray, keys_are: str, namespace: Optional[str], origin: str) -> None:
        self.keys, self.origin = keys, origin
        # "raw" keys of CSV data are hashes of the values in `namespace`; None: the values are the keys.
        self.namespace = namespace if keys_are == "raw" else None
        self._row = {int(key): row for row, key in enumerate(keys.tolist())}
        self.values: Dict[int, str] = {}
        self.names: Dict[int, str] = {}

    def key_of(self, value: str) -> int:
        if self.namespace is not None:
            return int(hash_ids(self.namespace, [value])[0])
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"key={value!r}: {self.origin} is keyed by row numbers; give an integer") from None

    def rows(self, values: Sequence[str]) -> np.ndarray:
        """The row of each value; a value without one stops the lookup, naming it."""
        rows = []
        for value in values:
            key = self.key_of(value)
            if key not in self._row:
                how = f" (its id in namespace {self.namespace!r}: {key})" if self.namespace is not None else ""
                raise KeyError(f"key={value!r}{how}: not among the {len(self.keys)} keys of {self.origin}")
            rows.append(self._row[key])
        return np.array(rows, np.int64)

    def add_names(self, path: Path, key_column: int, name_column: int, delimiter: str, encoding: str) -> None:
        """Reads `path`'s (value, name) columns; a line without them stops, naming the line."""
        values, names = [], []
        with open(path, newline="", encoding=encoding) as stream:
            for line, fields in enumerate(csv.reader(stream, delimiter=delimiter), 1):
                if not fields:
                    continue
                if max(key_column, name_column) >= len(fields):
                    raise ValueError(f"{path}:{line}: {len(fields)} fields, similar.names expects columns "
                                     f"{key_column} (key) and {name_column} (name)")
                values.append(fields[key_column])
                names.append(fields[name_column])
        for value, name in zip(values, names):
            key = self.key_of(value)
            self.values[key], self.names[key] = value, name

    def describe(self, row: int) -> Tuple[str, str]:
        """(raw value, name) of a row's key, each "" where unknown (a hashed id prints as itself)."""
        key = int(self.keys[row])
        return self.values.get(key, str(key) if self.namespace is None else f"id {key}"), self.names.get(key, "")


def read_values(path: Path) -> List[str]:
    """A keys file: one raw value a line, blank lines skipped."""
    values = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not values:
        raise ValueError(f"similar.keys_file={path}: holds no keys (one a line)")
    return values

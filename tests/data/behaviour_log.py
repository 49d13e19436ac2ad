"""A small MovieLens-shaped ratings log (u.data's layout) for Item2Vec tests: 12 users rating
some of 24 items at distinct times, so a timestamp split has no ties."""

from pathlib import Path

import numpy as np

USERS, ITEMS, RATINGS_PER_USER = 12, 24, 20


def write_log(directory: Path, seed: int = 0) -> Path:
    """Writes `<directory>/u.data` (user, item, rating, timestamp; tab-separated) and the side
    tables the MovieLens schema joins (u.user, u.item); returns the directory."""
    rng = np.random.default_rng(seed)
    lines = []
    times = rng.permutation(USERS * RATINGS_PER_USER) * 60 + 880_000_000
    for user in range(USERS):
        for j, item in enumerate(rng.choice(ITEMS, RATINGS_PER_USER, replace=False)):
            lines.append(f"{user + 1}\t{item + 1}\t{rng.integers(1, 6)}\t{times[user * RATINGS_PER_USER + j]}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text("\n".join(lines) + "\n")
    (directory / "u.user").write_text("".join(f"{u + 1}|{20 + u}|{'MF'[u % 2]}|student|0{u:04d}\n" for u in range(USERS)))
    genres = "|".join(["0"] * 19)
    (directory / "u.item").write_text("".join(f"{i + 1}|Movie {i + 1} (1995)|01-Jan-1995||http://x|{genres}\n"
                                              for i in range(ITEMS)))
    return directory


def behaviour_overrides(directory: Path) -> list:
    """launch/train.py overrides: data=movielens100k_item2vec over the log in `directory`."""
    return ["data=movielens100k_item2vec", f"data.behaviour.schema.root={directory}"]

"""Stable 64-bit ids: splitmix64, the finaliser of Java's SplittableRandom (Steele et al. 2014).

splitmix64 is a bijection on 64-bit integers with good avalanche, so distinct inputs
never collide and every output bit depends on every input bit; ids built from it are the
same on every machine and run, and any table size taken modulo them spreads evenly.
"""

import numpy as np


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of each element, vectorised (uint64 in, uint64 out).

    >>> hex(int(splitmix64(np.array([0], np.uint64))[0]))
    '0xe220a8397b1dcdaf'
    """
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def to_id(hashed: np.ndarray) -> np.ndarray:
    """The top 63 bits of a 64-bit hash as a non-negative int64 id, as torch indexes want."""
    return (hashed >> np.uint64(1)).astype(np.int64)

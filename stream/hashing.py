"""The 64-bit mixing every vectorised hash here is built from (splitmix64's finaliser), and what
is derived from it: a key's mixed bits and a uniform number that is a function of a value."""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / the golden ratio, odd: multiplying by it is a bijection


def splitmix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of uint64 values: every input bit moves every output bit."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 values (the golden increment, then the finaliser), as uint64."""
    with np.errstate(over="ignore"):
        return splitmix64(values.astype(np.int64).view(np.uint64) + GOLDEN)


def hash_uniform(values: np.ndarray) -> np.ndarray:
    """A number in (0, 1) per int64 value, a function of the value alone (its 53 top mixed bits)."""
    return ((mix64(values) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

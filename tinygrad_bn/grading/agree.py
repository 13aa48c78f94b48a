"""One notion of "agrees" for the checker: verdicts, traced lines and pages all use it.

Two arrays agree when their normwise error (`scaled_error`: the largest difference over the
largest |a| + |b|) is at most TOLERANCE. The inputs are well conditioned (N >= 4 values per
statistic), so a correct float64 implementation is ~1e-15 from the staged graph, and an
eps-sized slip (eps outside the square root, ~1e-6) is far outside.
"""

from __future__ import annotations

import numpy as np

from ..check.gradcheck import scaled_error

__all__ = ["TOLERANCE", "agrees", "difference"]

TOLERANCE = 1e-8


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """The normwise error between a and b (same shape), 0 for empty arrays."""
    return scaled_error(np.asarray(a, np.float64), np.asarray(b, np.float64))


def agrees(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a and b (same shape) agree; arrays of zeros agree with nothing but zeros."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.any(b):
        return not np.any(a)
    return difference(a, b) <= TOLERANCE

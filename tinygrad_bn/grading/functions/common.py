"""Small predicates the entries' slips are written with."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...check.gradcheck import scaled_error

__all__ = ["agrees", "output", "TOLERANCE", "FLOAT32_TOLERANCE"]

TOLERANCE = 1e-8          # normwise, float64
FLOAT32_TOLERANCE = 1e-4  # a student computing in float32


def agrees(got: Any, right: Any, tolerance: float = TOLERANCE) -> bool:
    """Same shape and within `tolerance` normwise (float32 results get float32's)."""
    if got is None:
        return False
    got, right = np.asarray(got), np.asarray(right, dtype=np.float64)
    if got.shape != right.shape:
        return False
    if got.dtype == np.float32:
        tolerance = max(tolerance, FLOAT32_TOLERANCE)
    with np.errstate(all="ignore"):
        error = scaled_error(np.asarray(got, dtype=np.float64), right)
    return bool(np.isfinite(error) and error <= tolerance)


def output(seen: Any, index: int) -> np.ndarray | None:
    """The student's output `index` of one call, or None (raised, or fewer outputs)."""
    if seen.outputs is None or index >= len(seen.outputs):
        return None
    return seen.outputs[index]

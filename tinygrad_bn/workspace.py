"""A small pool of large output buffers, reused once nobody else holds them.

A fresh large numpy array is backed by fresh pages from the operating system, and every
page faults on first touch: for a forward+backward over a (4096, 1024) batch that is
thousands of faults per step and up to half the time. The fused ops take their outputs
from this pool instead. A pooled array is handed out again only when the pool's own
reference is the only one left (the node that owned it, and any view of it, are gone),
so a result a caller still holds is never overwritten.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

__all__ = ["empty", "clear", "pooled_bytes", "set_limit", "MIN_BYTES"]

MIN_BYTES = 1 << 16       # smaller arrays come from numpy directly (malloc reuses them)
_max_bytes = 1 << 30      # the pool never keeps more than this alive (set_limit changes it)
_PER_SHAPE = 24           # arrays kept per (shape, dtype): two steps of a staged graph

_lock = threading.Lock()
_pool: dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]] = {}
_total = 0


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized array of `shape` and `dtype`, recycled when one is free."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    global _total
    key = (shape, dtype)
    with _lock:
        arrays = _pool.get(key)
        if arrays is None:
            arrays = _pool[key] = []
        for array in arrays:
            # The list's slot, this loop's name and getrefcount's argument: nobody else.
            if sys.getrefcount(array) == 3:
                return array
        array = np.empty(shape, dtype)
        if len(arrays) < _PER_SHAPE and _total + nbytes <= _max_bytes:
            arrays.append(array)
            _total += nbytes
        return array


def clear() -> None:
    """Drop every pooled array (memory returns once callers drop theirs too)."""
    global _total
    with _lock:
        _pool.clear()
        _total = 0


def set_limit(max_bytes: int) -> None:
    """Keep at most `max_bytes` in the pool from now on (0 turns pooling off)."""
    global _max_bytes
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes: expected an int >= 0, got {max_bytes!r}")
    _max_bytes = max_bytes


def pooled_bytes() -> int:
    """Bytes of the arrays the pool keeps alive."""
    return _total

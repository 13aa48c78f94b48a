"""Axis arguments checked once, where they enter: reductions, transposes, normalizations.

Each check turns what a user may write (None, an int, a tuple or list, negative axes) into
the one form the ops store, or raises an error naming the argument and what was given.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

__all__ = ["Axis", "normalize_axis", "normalize_axis_order"]

Axis = int | tuple[int, ...] | None


def normalize_axis(axis: Axis, ndim: int, argname: str = "axis") -> tuple[int, ...]:
    """Turn None/int/tuple into a sorted tuple of non-negative axes, or raise naming `argname`."""
    if type(axis) is list:
        axis = tuple(axis)
    try:
        # The type is part of the key: True == 1 and hash alike, but only one is valid.
        return _normalize_axis(axis, ndim, argname, type(axis))
    except TypeError as error:
        if "unhashable" not in str(error):
            raise
        raise TypeError(f"{argname}: expected int or tuple of ints, got {axis!r}") from None


@functools.lru_cache(maxsize=512)
def _normalize_axis(axis: Axis, ndim: int, argname: str, _type: type) -> tuple[int, ...]:
    # Cached: every reduction of every forward pass asks the same few questions.
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) else axis
    if not isinstance(axes, tuple):
        raise TypeError(f"{argname}: expected int or tuple of ints, got {axis!r}")
    result = []
    for a in axes:
        if not isinstance(a, numbers.Integral) or isinstance(a, bool):
            raise TypeError(f"{argname}: expected int or tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{argname}: expected values in [{-ndim}, {ndim}) for an input "
                             f"with {ndim} dimensions, got {axis!r}")
        result.append(int(a) % ndim)
    if len(set(result)) != len(result):
        raise ValueError(f"{argname}: repeated axis in {axis!r}")
    return tuple(sorted(result))


def normalize_axis_order(axes: Any, ndim: int) -> tuple[int, ...]:
    """Validate a permutation of range(ndim) (negative axes allowed), naming `axes`."""
    problem = f"axes: expected a permutation of 0..{ndim - 1} (negative allowed), got {axes!r}"
    if not isinstance(axes, tuple) or len(axes) != ndim:
        raise ValueError(problem)
    order = []
    for a in axes:
        if not isinstance(a, numbers.Integral) or isinstance(a, bool):
            raise TypeError(f"axes: expected ints, got {axes!r}")
        if not -ndim <= a < ndim:
            raise ValueError(problem)
        order.append(int(a) % ndim)
    if len(set(order)) != ndim:
        raise ValueError(problem)
    return tuple(order)

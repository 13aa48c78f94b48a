"""Indexing ops: `node[index]` and its transpose, the scatter-add of a gradient into zeros.

    Index:      out = a[index]                      (numpy's rules: ints, slices, None, ...,
                                                     integer arrays, boolean masks)
    ScatterAdd: out = zeros(shape); out[index] += g  (repeated indices add, np.add.at)

Each is the other's VJP, so indexing is differentiable to any order. The index is a
parameter of the node (it gets no gradient); `normalize_index` checks it where it enters.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .dual import GraphValue
from .ops import Op, register

__all__ = ["Index", "ScatterAdd", "normalize_index", "scatter_add"]

IndexItem = int | slice | None | type(Ellipsis) | np.ndarray


def normalize_index(index: Any, shape: tuple[int, ...]) -> tuple[IndexItem, ...]:
    """`index` as a tuple of ints, slices, None, Ellipsis and integer or boolean arrays, checked
    against an input of `shape`; raises IndexError (or TypeError) naming `index`."""
    items = index if isinstance(index, tuple) else (index,)
    normalized: list[IndexItem] = []
    for item in items:
        if isinstance(item, GraphValue):
            raise TypeError("index: a Node cannot index (its values are floats); index with "
                            "ints, slices, None, ..., or integer or boolean numpy arrays")
        if item is None or item is Ellipsis or isinstance(item, slice):
            normalized.append(item)
        elif isinstance(item, (bool, np.bool_)):
            normalized.append(np.asarray(item))
        elif isinstance(item, numbers.Integral):
            normalized.append(int(item))
        else:
            # A copy, read-only: the node's backward must see the index its forward used,
            # whatever the caller does to its array afterwards.
            array = np.array(item)
            if array.size == 0 and array.dtype.kind == "f":  # [] picks nothing, as in numpy
                array = array.astype(np.intp)
            elif array.dtype.kind not in "iub":
                raise TypeError(f"index: expected ints, slices, None, ..., or integer or "
                                f"boolean arrays, got {type(item).__name__} of dtype {array.dtype}")
            array.flags.writeable = False
            normalized.append(array)
    result = tuple(normalized)
    try:  # numpy's own check, on an empty stand-in of the input's shape (no data touched)
        np.empty(shape, dtype=np.bool_)[result]
    except IndexError as error:
        raise IndexError(f"index: {error} (input of shape {shape})") from None
    return result


def _has_integer_array(index: tuple[IndexItem, ...]) -> bool:
    # Only integer arrays may name an element twice (a boolean mask never does).
    return any(isinstance(item, np.ndarray) and item.dtype.kind in "iu" for item in index)


def scatter_add(grad: Any, shape: tuple[int, ...], index: tuple[IndexItem, ...]) -> Any:
    """zeros(shape) with `grad` added at `index` (the VJP of indexing), on arrays or Nodes."""
    if isinstance(grad, GraphValue):
        return grad.apply_op(ScatterAdd, shape=tuple(shape), index=index)
    return ScatterAdd.forward(grad, shape=shape, index=index)


@register
class Index(Op):
    """out = a[index] with numpy's indexing rules (a view for basic indexing)."""

    name = "index"
    formula = ("d/d{0} = 1 at the picked elements, else 0 (a repeated pick adds)",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, index):
        return a[index]

    @staticmethod
    def backward(upstream, a, out, *, index):
        return (scatter_add(upstream, a.shape, index),)


@register
class ScatterAdd(Op):
    """out = zeros(shape), then g added at index (np.add.at: repeated indices add)."""

    name = "scatter_add"
    formula = ("d/d{0} = 1 (upstream picked at the index)",)
    domain = ("real",)

    @staticmethod
    def forward(g, *, shape, index):
        out = np.zeros(shape, dtype=np.result_type(g))
        if _has_integer_array(index):
            np.add.at(out, index, g)
        else:  # every element at most once: an assignment does it
            out[index] = g
        return out

    @staticmethod
    def backward(upstream, g, out, *, shape, index):
        return (upstream[index],)

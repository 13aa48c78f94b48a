"""Shape ops that move values around: padding, joining, and sliding windows.

    Pad:           out = np.pad(a, pad_width, constant_values=c)   VJP: the middle sliced out
    Concatenate:   out = np.concatenate(inputs, axis)              VJP: each input's slice
    SlidingWindow: out = sliding_window_view(a, window_shape, axis) (a read-only view: the
                   windows as new trailing axes)                   VJP: WindowSum
    WindowSum:     every window added back where it came from      VJP: SlidingWindow

The VJPs slice with `[...]`, which Nodes share with arrays (the index op), and the two
window ops are each other's VJP, so all of them are differentiable to any order.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .dual import GraphValue
from .ops import Op, register

__all__ = ["Pad", "Concatenate", "SlidingWindow", "WindowSum", "window_sum", "windows_of",
           "window_out_shape"]


@register
class Pad(Op):
    """Constant padding: pad_width ((before, after) per axis) and the fill are parameters."""

    name = "pad"
    formula = ("d/d{0} = 1 inside, the padding gets nothing",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, pad_width, constant_values):
        return np.pad(a, pad_width, mode="constant", constant_values=constant_values)

    @staticmethod
    def backward(upstream, a, out, *, pad_width, constant_values):
        middle = tuple(slice(before, before + size) for (before, _), size in zip(pad_width, a.shape))
        return (upstream[middle],)


@register
class Concatenate(Op):
    """The inputs joined along `axis` (any number of inputs)."""

    name = "concatenate"
    formula = ("d/d{i} = 1 (its slice of the upstream)",)
    domain = ("real", "real")

    @staticmethod
    def forward(*inputs, axis):
        return np.concatenate(inputs, axis=axis)

    @staticmethod
    def backward(upstream, *inputs_and_out, axis):
        grads, start = [], 0
        for a in inputs_and_out[:-1]:
            stop = start + a.shape[axis]
            grads.append(upstream[(slice(None),) * axis + (slice(start, stop),)])
            start = stop
        return tuple(grads)

    @classmethod
    def describe(cls, input_names, params, input_shapes):
        return [f"d/d{name} = 1 (its slice of the upstream along axis {params['axis']})"
                for name in input_names]


def window_out_shape(shape: tuple[int, ...], window_shape: tuple[int, ...], axis: tuple[int, ...]
                     ) -> tuple[int, ...]:
    """The leading (window-position) axes of sliding_window_view(shape, window_shape, axis)."""
    out = list(shape)
    for size, ax in zip(window_shape, axis):
        out[ax] -= size - 1
    return tuple(out)


def windows_of(x: Any, window_shape: tuple[int, ...], axis: tuple[int, ...]) -> Any:
    """numpy's sliding_window_view of an array (a read-only view); the op for a Node."""
    if isinstance(x, GraphValue):
        return x.apply_op(SlidingWindow, window_shape=window_shape, axis=axis)
    return np.lib.stride_tricks.sliding_window_view(x, window_shape, axis=axis)


def window_sum(g: Any, shape: tuple[int, ...], window_shape: tuple[int, ...], axis: tuple[int, ...]
               ) -> Any:
    """Every window of g added back at the place it covers in an array of `shape` (overlaps
    add up): the VJP of the sliding windows, on arrays or Nodes."""
    if isinstance(g, GraphValue):
        return g.apply_op(WindowSum, shape=tuple(shape), window_shape=window_shape, axis=axis)
    return WindowSum.forward(g, shape=shape, window_shape=window_shape, axis=axis)


@register
class SlidingWindow(Op):
    """numpy's sliding_window_view: out[..., k] = a[... + k], the windows as trailing axes."""

    name = "sliding_window"
    formula = ("d/d{0} = 1 per window an element is in (overlapping windows add)",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, window_shape, axis):
        return np.lib.stride_tricks.sliding_window_view(a, window_shape, axis=axis)

    @staticmethod
    def backward(upstream, a, out, *, window_shape, axis):
        return (window_sum(upstream, a.shape, window_shape, axis),)


@register
class WindowSum(Op):
    """The transpose of SlidingWindow: each window's values added back where they came from."""

    name = "window_sum"
    formula = ("d/d{0} = 1 (the upstream's windows)",)
    domain = ("real",)

    @staticmethod
    def forward(g, *, shape, window_shape, axis):
        out = np.zeros(shape, dtype=g.dtype)
        positions = window_out_shape(shape, window_shape, axis)
        lead = len(shape)
        # The window axes first, in one copy, so that each offset's values are contiguous.
        by_offset = np.ascontiguousarray(np.moveaxis(g, tuple(range(lead, g.ndim)),
                                                     tuple(range(len(window_shape)))))
        # One add per offset inside the window (window_shape's product of them), each over
        # every window position at once.
        for offset in itertools.product(*(range(size) for size in window_shape)):
            start = [0] * lead
            for k, ax in zip(offset, axis):
                start[ax] += k
            target = tuple(slice(s, s + n) for s, n in zip(start, positions))
            out[target] += by_offset[offset]
        return out

    @staticmethod
    def backward(upstream, g, out, *, shape, window_shape, axis):
        return (windows_of(upstream, window_shape, axis),)

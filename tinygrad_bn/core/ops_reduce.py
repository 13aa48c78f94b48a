"""Extremes: the largest or smallest value over axes (`Max`, `Min`) and elementwise of two
inputs (`Maximum`, `Minimum`).

Ties share the gradient evenly, as PyTorch's `amax`/`amin` and `maximum`/`minimum` do: a
max over k equal largest values sends upstream / k to each; `maximum(a, b)` with a == b
sends upstream / 2 to each. The tie pattern is read from the values (`value`), a fixed mask,
so the VJPs are linear in the upstream and differentiable again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dual import broadcast_to, unbroadcast, value, where
from .ops import Op, register

__all__ = ["Max", "Min", "Maximum", "Minimum"]


def _extreme_backward(upstream: Any, a: Any, out: Any, axis: tuple[int, ...], keepdims: bool) -> Any:
    # The upstream split evenly among the elements equal to the extreme of their group.
    a_value, out_value = value(a), value(out)
    kept_shape = tuple(1 if i in axis else size for i, size in enumerate(a_value.shape))
    hit = a_value == np.reshape(out_value, kept_shape)
    count = hit.sum(axis=axis, keepdims=True, dtype=a_value.dtype)  # exact: counts are small
    share = (upstream if keepdims else upstream.reshape(kept_shape)) / count
    return where(hit, broadcast_to(share, a_value.shape), 0.0)


@register
class Max(Op):
    """The largest value over `axis`; ties share the gradient evenly (PyTorch's amax rule)."""

    name = "max"
    formula = ("d/d{0} = 1/k at the k elements equal to the max, else 0",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, axis, keepdims):
        return a.max(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(upstream, a, out, *, axis, keepdims):
        return (_extreme_backward(upstream, a, out, axis, keepdims),)


@register
class Min(Op):
    """The smallest value over `axis`; ties share the gradient evenly (PyTorch's amin rule)."""

    name = "min"
    formula = ("d/d{0} = 1/k at the k elements equal to the min, else 0",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, axis, keepdims):
        return a.min(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(upstream, a, out, *, axis, keepdims):
        return (_extreme_backward(upstream, a, out, axis, keepdims),)


def _pick_backward(upstream: Any, a: Any, b: Any, a_wins: np.ndarray) -> tuple[Any, Any]:
    # a_wins: where a is the result; where a == b each input gets half the upstream.
    tie = value(a) == value(b)
    half = upstream * 0.5
    to_a = where(tie, half, where(a_wins, upstream, 0.0))
    to_b = where(tie, half, where(a_wins, 0.0, upstream))
    return unbroadcast(to_a, a.shape), unbroadcast(to_b, b.shape)


@register
class Maximum(Op):
    """The larger of a and b elementwise (broadcasting); a tie sends half the upstream to each."""

    name = "maximum"
    formula = ("d/d{0} = 1 where {0} > {1}, 1/2 where equal, else 0",
               "d/d{1} = 1 where {1} > {0}, 1/2 where equal, else 0")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return np.maximum(a, b)

    @staticmethod
    def backward(upstream, a, b, out):
        return _pick_backward(upstream, a, b, value(a) > value(b))


@register
class Minimum(Op):
    """The smaller of a and b elementwise (broadcasting); a tie sends half the upstream to each."""

    name = "minimum"
    formula = ("d/d{0} = 1 where {0} < {1}, 1/2 where equal, else 0",
               "d/d{1} = 1 where {1} < {0}, 1/2 where equal, else 0")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return np.minimum(a, b)

    @staticmethod
    def backward(upstream, a, b, out):
        return _pick_backward(upstream, a, b, value(a) < value(b))

"""What VJPs are written with: helpers that work on numpy arrays and on Nodes alike.

On arrays they are plain numpy; given a Node they record ops, so that the same VJP code
gives first-order gradients on arrays and a differentiable graph on Nodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .node import Node, apply, value
from .operands import operand_pair

__all__ = ["unbroadcast", "broadcast_to", "where", "log_of", "exp_of"]


def unbroadcast(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum `grad` over the axes that broadcasting added or stretched, back to `shape`.

    (N, D) -> (D,) sums over axis 0; (N, D) -> (1, D) too, keeping the axis.
    """
    if grad.shape == shape:
        return grad
    added = grad.ndim - len(shape)
    if added:
        grad = grad.sum(axis=tuple(range(added)))
    stretched = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def broadcast_to(x: Any, shape: tuple[int, ...]) -> Any:
    """numpy's broadcast_to for arrays (a read-only view); the `broadcast_to` op for Nodes."""
    if isinstance(x, Node):
        return apply(_ops.BroadcastTo, (x,), shape=tuple(shape))
    return np.broadcast_to(x, shape)


def where(condition: Any, a: Any, b: Any) -> Any:
    """a where condition holds, else b (numpy's where; the `where` op when a or b is a Node).

    Unlike `condition * a`, an infinite or NaN `a` where the condition fails gives b, not NaN.
    """
    condition = np.asarray(value(condition), dtype=bool)
    if isinstance(a, Node) or isinstance(b, Node):
        return apply(_ops.Where, operand_pair(a, b), condition=condition)
    out = np.where(condition, a, b)
    return out[()] if out.ndim == 0 else out


def log_of(x: Any) -> Any:
    """The natural logarithm of an array (numpy's) or of a Node (the log op)."""
    return x.log() if isinstance(x, Node) else np.log(x)


def exp_of(x: Any) -> Any:
    """e**x of an array (numpy's) or of a Node (the exp op)."""
    return x.exp() if isinstance(x, Node) else np.exp(x)


from . import ops as _ops  # noqa: E402  (two of the ops are recorded here; the ops use these helpers)

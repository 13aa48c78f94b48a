"""What VJPs are written with: helpers that work on numpy arrays and on Nodes alike.

On numpy values they are plain numpy. A Node is a `GraphValue`: given one, each helper calls
the Node's method of the same name, which records the op, so that the same VJP code gives
first-order gradients on arrays and a differentiable graph on Nodes. The helpers ask the
value rather than import the graph: the ops import this file, and the graph imports the ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GraphValue", "unbroadcast", "broadcast_to", "where", "log_of", "exp_of", "value"]


class GraphValue:
    """A value that records the ops done to it: node.py's `Node` (its one subclass).

    The helpers below call these methods for it; `data` is its numpy value.
    """

    __slots__ = ()
    data: Any

    def broadcast_to(self, shape: tuple[int, ...]) -> GraphValue:
        """This value broadcast to `shape`, recorded as the broadcast_to op."""
        raise NotImplementedError

    def log(self) -> GraphValue:
        """The natural logarithm, recorded as the log op."""
        raise NotImplementedError

    def exp(self) -> GraphValue:
        """e**self, recorded as the exp op."""
        raise NotImplementedError

    @staticmethod
    def where(condition: np.ndarray, a: Any, b: Any) -> GraphValue:
        """a where `condition` (a boolean array) holds, else b, recorded as the where op."""
        raise NotImplementedError

    def apply_op(self, op: type, **params: Any) -> GraphValue:
        """`op` (a one-input op class) run on this value and recorded: how an op file's own
        helper (indexing's scatter-add, the windows' sum) records its op on a Node without
        importing node.py."""
        raise NotImplementedError


def value(x: Any) -> Any:
    """The numpy value of a Node; anything else as it is."""
    return x.data if isinstance(x, GraphValue) else x


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
    if isinstance(x, GraphValue):
        return x.broadcast_to(shape)
    return np.broadcast_to(x, shape)


def where(condition: Any, a: Any, b: Any) -> Any:
    """a where condition holds, else b (numpy's where; the `where` op when a or b is a Node).

    Unlike `condition * a`, an infinite or NaN `a` where the condition fails gives b, not NaN.
    """
    condition = np.asarray(value(condition), dtype=bool)
    for operand in (a, b):
        if isinstance(operand, GraphValue):
            return operand.where(condition, a, b)
    out = np.where(condition, a, b)
    return out[()] if out.ndim == 0 else out


def log_of(x: Any) -> Any:
    """The natural logarithm of an array (numpy's) or of a Node (the log op)."""
    return x.log() if isinstance(x, GraphValue) else np.log(x)


def exp_of(x: Any) -> Any:
    """e**x of an array (numpy's) or of a Node (the exp op)."""
    return x.exp() if isinstance(x, GraphValue) else np.exp(x)

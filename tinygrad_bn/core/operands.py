"""What an op's operands become: Nodes, with Python numbers as shared constants.

`x * 0.5` multiplies two Nodes: the number becomes a `Constant` of x's dtype (so float32
stays float32), and since a Constant is immutable, one per number and dtype serves every
graph (at most `MAX_SHARED_CONSTANTS` are kept; further numbers get constants of their own).
Arrays and numpy numbers become constant leaves of their own dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .node import Constant, Node

__all__ = ["as_operand", "operand_pair", "number_constant", "MAX_SHARED_CONSTANTS"]

MAX_SHARED_CONSTANTS = 1024
_shared_constants: dict[tuple[Any, ...], Constant] = {}


def number_constant(number: Any, dtype: np.dtype) -> Node:
    """A Python number as a Constant of `dtype`; anything else as `as_operand` makes it."""
    kind = type(number)
    if kind is float or kind is int:
        # 0.0 and -0.0 are equal keys: the sign tells them apart.
        key = (number, dtype) if number else (number, dtype, math.copysign(1, number))
        node = _shared_constants.get(key)
        if node is None:
            node = Constant(np.asarray(number, dtype=dtype))
            if len(_shared_constants) < MAX_SHARED_CONSTANTS:
                _shared_constants[key] = node
        return node
    return as_operand(number)


def as_operand(a: Any) -> Node:
    """A Node as it is; anything else as a constant leaf (requires_grad=False)."""
    return a if isinstance(a, Node) else Node(a, requires_grad=False)


def operand_pair(a: Any, b: Any) -> tuple[Node, Node]:
    """Both operands of a binary op as Nodes; a Python number takes the other's dtype."""
    if isinstance(a, Node):
        return a, b if isinstance(b, Node) else number_constant(b, a.dtype)
    if isinstance(b, Node):
        return number_constant(a, b.dtype), b
    return as_operand(a), as_operand(b)

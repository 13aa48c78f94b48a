"""The functional API: `tb.add(a, b)`, `tb.mean(x, axis=0)`, ... (what Node's operators call).

Each function turns its operands into Nodes (below: a Python number becomes a shared
constant), checks its arguments (`axes.py`) and records one op of `ops.py`. This file and
`node.py` are the core's one import pair: Node's operators call these functions, which
record Nodes. Everything else in the core imports one way, downwards.
"""

from __future__ import annotations

import builtins
import math
import numbers
from typing import Any

import numpy as np

from .axes import Axis, normalize_axis, normalize_axis_order
from .node import FLOAT_DTYPES, Constant, Node, apply, value
from .ops import (
    Add,
    BroadcastTo,
    Cast,
    Div,
    Exp,
    Identity,
    Log,
    MatMul,
    Mean,
    Mul,
    Neg,
    Pow,
    PowConst,
    Relu,
    Reshape,
    Sqrt,
    Sub,
    Sum,
    Tanh,
    Transpose,
    Where,
)

__all__ = ["add", "sub", "mul", "div", "pow", "neg", "identity", "sqrt", "exp", "log", "relu",
           "tanh", "sum", "mean", "reshape", "transpose", "matmul", "astype", "broadcast_to",
           "where", "as_operand", "operand_pair", "number_constant", "MAX_SHARED_CONSTANTS"]


# --- operands: what an op's inputs become ---------------------------------------------
# `x * 0.5` multiplies two Nodes: the number becomes a `Constant` of x's dtype (so float32
# stays float32), and since a Constant is immutable, one per number and dtype serves every
# graph (at most `MAX_SHARED_CONSTANTS` are kept; further numbers get constants of their
# own). Arrays and numpy numbers become constant leaves of their own dtype.
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


# --- the ops ---------------------------------------------------------------------------
def add(a: Any, b: Any) -> Node:
    """a + b with numpy broadcasting; gradients reduced back to each input's shape."""
    return apply(Add, operand_pair(a, b))


def sub(a: Any, b: Any) -> Node:
    """a - b with broadcasting."""
    return apply(Sub, operand_pair(a, b))


def mul(a: Any, b: Any) -> Node:
    """a * b with broadcasting."""
    return apply(Mul, operand_pair(a, b))


def div(a: Any, b: Any) -> Node:
    """a / b with broadcasting."""
    return apply(Div, operand_pair(a, b))


def pow(base: Any, exponent: Any) -> Node:  # noqa: A001 - mirrors the operator's name
    """base ** exponent; a number exponent is a constant, a Node exponent gets a gradient."""
    if isinstance(exponent, numbers.Real) and not isinstance(exponent, (bool, np.ndarray)):
        return apply(PowConst, (as_operand(base),), p=float(exponent))
    return apply(Pow, operand_pair(base, exponent))


def identity(a: Any) -> Node:
    """a itself, as a node of its own."""
    return apply(Identity, (as_operand(a),))


def neg(a: Any) -> Node:
    """-a."""
    return apply(Neg, (as_operand(a),))


def sqrt(a: Any) -> Node:
    """Elementwise square root."""
    return apply(Sqrt, (as_operand(a),))


def exp(a: Any) -> Node:
    """Elementwise e**a."""
    return apply(Exp, (as_operand(a),))


def log(a: Any) -> Node:
    """Elementwise natural logarithm."""
    return apply(Log, (as_operand(a),))


def relu(a: Any) -> Node:
    """max(a, 0); its derivative at 0 is taken as 0."""
    return apply(Relu, (as_operand(a),))


def tanh(a: Any) -> Node:
    """Elementwise hyperbolic tangent."""
    return apply(Tanh, (as_operand(a),))


def sum(a: Any, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """Sum over `axis` (None: all axes); (N, D) -> (D,) for axis=0."""
    a = as_operand(a)
    return apply(Sum, (a,), axis=normalize_axis(axis, a.ndim), keepdims=bool(keepdims))


def mean(a: Any, axis: Axis = None, keepdims: bool = False) -> Node:
    """Mean over `axis` (None: all axes); (N, D) -> (1, D) for axis=0, keepdims=True."""
    a = as_operand(a)
    return apply(Mean, (a,), axis=normalize_axis(axis, a.ndim), keepdims=bool(keepdims))


def reshape(a: Any, shape: tuple[int, ...]) -> Node:
    """numpy reshape (one -1 allowed); raises ValueError naming `shape` when it does not fit."""
    try:
        return apply(Reshape, (as_operand(a),), shape=tuple(builtins.int(s) for s in shape))
    except (TypeError, ValueError) as error:
        raise ValueError(f"reshape: shape {tuple(shape)} does not fit an input of shape "
                         f"{np.shape(value(a))} ({error})") from None


def astype(a: Any, dtype: Any) -> Node:
    """a in dtype float32 or float64 (a node of its own even when the dtype is the same)."""
    a = as_operand(a)
    target = np.dtype(dtype)
    if target not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {target}")
    return apply(Cast, (a,), dtype=target)


def transpose(a: Any, axes: tuple[int, ...] | None = None) -> Node:
    """Permute axes; None reverses them. (N, D) -> (D, N)."""
    a = as_operand(a)
    order = tuple(range(a.ndim))[::-1] if axes is None else normalize_axis_order(axes, a.ndim)
    return apply(Transpose, (a,), axes=order)


def matmul(a: Any, b: Any) -> Node:
    """a @ b with numpy's matmul rules (1-D operands, batch broadcasting)."""
    return apply(MatMul, operand_pair(a, b))


def broadcast_to(a: Any, shape: tuple[int, ...]) -> Node:
    """a broadcast to `shape` with numpy's rules; the gradient is summed back. (D,) -> (N, D)."""
    return apply(BroadcastTo, (as_operand(a),), shape=tuple(shape))


def where(condition: Any, a: Any, b: Any) -> Node:
    """a where `condition` holds, else b, as a Node (`tb.where` gives arrays for arrays)."""
    condition = np.asarray(value(condition), dtype=bool)
    return apply(Where, operand_pair(a, b), condition=condition)

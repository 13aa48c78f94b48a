"""The functional API: `tb.add(a, b)`, `tb.mean(x, axis=0)`, ... (what Node's operators call).

Each function turns its operands into Nodes (`operands.py`), checks its arguments
(`axes.py`) and records one op of `ops.py`.
"""

from __future__ import annotations

import builtins
import numbers
from typing import Any

import numpy as np

from .axes import Axis, normalize_axis, normalize_axis_order
from .node import FLOAT_DTYPES, Node, apply, value
from .operands import as_operand, operand_pair
from .ops import (
    Add,
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
)

__all__ = ["add", "sub", "mul", "div", "pow", "neg", "identity", "sqrt", "exp", "log", "relu",
           "tanh", "sum", "mean", "reshape", "transpose", "matmul", "astype"]


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

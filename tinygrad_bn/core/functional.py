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


def as_operand(a: Any, argname: str | None = None) -> Node:
    """A Node as it is; anything array-like as a constant leaf (requires_grad=False). With
    `argname`, an error about the value names that argument instead of `data`."""
    if isinstance(a, Node):
        return a
    try:
        return Node(a, requires_grad=False)
    except TypeError as error:
        if argname is None:
            raise
        raise TypeError(str(error).replace("data:", f"{argname}:", 1)) from None


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


# --- indexing, extremes, padding, joining and sliding windows --------------------------
# (their ops live in ops_index.py, ops_reduce.py and ops_shape.py)
from .ops_index import Index, normalize_index  # noqa: E402
from .ops_reduce import Max, Maximum, Min, Minimum  # noqa: E402
from .ops_shape import Concatenate, Pad, SlidingWindow  # noqa: E402

__all__ += ["index", "max", "min", "maximum", "minimum", "pad", "concatenate", "stack",
            "sliding_window_view"]


def index(a: Any, index: Any) -> Node:
    """a[index] with numpy's rules: ints, slices (with steps), None, ..., integer arrays (a
    repeated index gets the sum of its gradients) and boolean masks. Raises IndexError
    naming `index` when it does not fit a's shape."""
    a = as_operand(a)
    return apply(Index, (a,), index=normalize_index(index, a.shape))


def _extreme(op: Any, a: Any, axis: Axis, keepdims: bool) -> Node:
    a = as_operand(a)
    axes = normalize_axis(axis, a.ndim)
    empty = [i for i in axes if a.shape[i] == 0]
    if empty:
        raise ValueError(f"axis: cannot take the {op.name} over axis {empty[0]}, which has size 0 "
                         f"(input of shape {a.shape})")
    return apply(op, (a,), axis=axes, keepdims=bool(keepdims))


def max(a: Any, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """The largest value over `axis` (None: all); (N, D) -> (N,) for axis=1. Elements tied
    for the max share the gradient evenly (PyTorch's amax rule)."""
    return _extreme(Max, a, axis, keepdims)


def min(a: Any, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """The smallest value over `axis` (None: all). Ties share the gradient evenly (amin's rule)."""
    return _extreme(Min, a, axis, keepdims)


def maximum(a: Any, b: Any) -> Node:
    """The larger of a and b elementwise, broadcasting; where a == b each gets half the
    gradient (as PyTorch's maximum)."""
    return apply(Maximum, operand_pair(a, b))


def minimum(a: Any, b: Any) -> Node:
    """The smaller of a and b elementwise, broadcasting; ties split the gradient (as PyTorch's)."""
    return apply(Minimum, operand_pair(a, b))


def _pad_pairs(pad_width: Any, ndim: int) -> tuple[tuple[int, int], ...]:
    # numpy's forms: n, (n,), (before, after), ((before, after),), one pair per axis.
    problem = (f"pad_width: expected non-negative ints as n, (before, after) or one pair per "
               f"axis for an input with {ndim} dimensions, got {pad_width!r}")
    try:
        widths = np.asarray(pad_width)
        if widths.dtype.kind not in "iu" or widths.ndim > 2:
            raise ValueError
        pairs = np.broadcast_to(widths, (ndim, 2))
    except ValueError:
        raise ValueError(problem) from None
    if (pairs < 0).any():
        raise ValueError(problem)
    return tuple((builtins.int(before), builtins.int(after)) for before, after in pairs)


def pad(x: Any, pad_width: Any, constant_values: float = 0) -> Node:
    """x padded with `constant_values` (numpy's constant mode and pad_width forms):
    (N, C, H, W) with ((0, 0), (0, 0), (p, p), (p, p)) -> (N, C, H + 2p, W + 2p)."""
    x = as_operand(x)
    if not isinstance(constant_values, numbers.Real) or isinstance(constant_values, bool):
        raise TypeError(f"constant_values: expected a number, got {constant_values!r}")
    return apply(Pad, (x,), pad_width=_pad_pairs(pad_width, x.ndim),
                 constant_values=float(constant_values))


def _joined(nodes: Any, argname: str = "nodes") -> list[Node]:
    if isinstance(nodes, Node) or not hasattr(nodes, "__iter__"):
        raise TypeError(f"{argname}: expected a sequence of Nodes or arrays, got {type(nodes).__name__}")
    joined = [as_operand(node) for node in nodes]
    if not joined:
        raise ValueError(f"{argname}: expected at least one array, got none")
    dtypes = {node.dtype for node in joined}
    if len(dtypes) > 1:
        raise TypeError(f"{argname}: expected one dtype, got {sorted(str(d) for d in dtypes)} "
                        f"(cast with .astype first)")
    return joined


def concatenate(nodes: Any, axis: int = 0) -> Node:
    """The nodes joined along `axis`: shapes equal except there; (2, 3) and (4, 3) -> (6, 3)."""
    joined = _joined(nodes)
    first = joined[0]
    if first.ndim == 0:
        raise ValueError("nodes: zero-dimensional arrays cannot be concatenated (use stack)")
    (axis_,) = normalize_axis(axis, first.ndim)
    for i, node in enumerate(joined):
        if node.ndim != first.ndim or any(a != b for k, (a, b) in enumerate(zip(node.shape, first.shape))
                                          if k != axis_):
            raise ValueError(f"nodes[{i}]: expected shape {first.shape} except along axis {axis_}, "
                             f"got {node.shape}")
    return apply(Concatenate, tuple(joined), axis=axis_)


def stack(nodes: Any, axis: int = 0) -> Node:
    """The nodes (all of one shape) joined along a new `axis`: three (2, 3) -> (3, 2, 3) for axis=0.
    Each gets the new axis by a reshape, then they are concatenated."""
    joined = _joined(nodes)
    shape = joined[0].shape
    for i, node in enumerate(joined):
        if node.shape != shape:
            raise ValueError(f"nodes[{i}]: expected shape {shape} (the first one's), got {node.shape}")
    (axis_,) = normalize_axis(axis, len(shape) + 1)
    expanded = (*shape[:axis_], 1, *shape[axis_:])
    return concatenate([reshape(node, expanded) for node in joined], axis=axis_)


def sliding_window_view(x: Any, window_shape: Any, axis: Any = None) -> Node:
    """numpy's sliding_window_view: the windows as new trailing axes, a read-only view.
    (N, C, H, W) with window_shape (HH, WW), axis (2, 3) -> (N, C, H-HH+1, W-WW+1, HH, WW);
    strides by indexing the result (v[:, :, ::s, ::s]). The VJP adds overlapping windows."""
    x = as_operand(x)
    sizes = (window_shape,) if isinstance(window_shape, numbers.Integral) else window_shape
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise TypeError(f"window_shape: expected an int or a tuple of ints, got {window_shape!r}") from None
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in sizes):
        raise ValueError(f"window_shape: expected non-negative ints, got {window_shape!r}")
    if axis is None:
        axes = tuple(range(x.ndim))
    else:  # repeated axes are allowed, as in numpy (windows of windows)
        axes = tuple(normalize_axis(a, x.ndim)[0] for a in
                     ((axis,) if isinstance(axis, numbers.Integral) else tuple(axis)))
    if len(sizes) != len(axes):
        raise ValueError(f"window_shape: expected one size per axis ({len(axes)}), got {window_shape!r}")
    left = list(x.shape)
    for size, ax in zip(sizes, axes):
        if size > left[ax]:
            raise ValueError(f"window_shape: a window of {size} does not fit axis {ax} of size "
                             f"{left[ax]} (input of shape {x.shape})")
        left[ax] -= size - 1
    return apply(SlidingWindow, (x,), window_shape=tuple(builtins.int(s) for s in sizes), axis=axes)

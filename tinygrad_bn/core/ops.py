"""The primitive ops: each one class with its forward and its vector-Jacobian product (VJP).

    forward(*inputs, **params) -> out
    backward(upstream, *inputs, out, **params) -> one gradient per input (None: no gradient)

`upstream` is d(loss)/d(out); the VJP returns d(loss)/d(input) for each input. A VJP reads
only the op's inputs, its output and its parameters (nothing is "saved"), and is written
with operators and methods that numpy arrays and Nodes share (`*`, `/`, `.sum(axis,
keepdims=True)`, `.reshape`, `unbroadcast`, `where`), so the same rule evaluated on Nodes
would record a graph of its own. Every op that broadcasts reduces its gradients back to
the input shapes with the single `unbroadcast` helper.

`formula` is the local derivative w.r.t. each input as text ({0}, {1} stand for the
inputs' names), shown by `explain` and the viewer. `domain` says where the op is smooth,
for the gradient tests: "real", "positive", "nonzero" or "kinked_at_zero".
"""

from __future__ import annotations

import builtins
import functools
import math
import numbers
from typing import Any, ClassVar

import numpy as np

from .node import NO_PARAMS, Constant, Node, _grad_mode

__all__ = [
    "Op", "REGISTRY", "apply", "unbroadcast", "broadcast_to", "where", "value", "log_of", "exp_of",
    "normalize_axis", "normalize_axis_order",
    "add", "sub", "mul", "div", "pow", "neg", "identity", "sqrt", "exp", "log", "relu", "tanh",
    "sum", "mean", "reshape", "transpose", "matmul", "astype",
]

Axis = int | tuple[int, ...] | None
REGISTRY: dict[str, type[Op]] = {}


class Op:
    """Base of every op. Subclasses set `name`, `formula`, `domain` and the two methods."""

    name: ClassVar[str] = ""
    formula: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def forward(*inputs: Any, **params: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def backward(upstream: Any, *inputs_and_out: Any, **params: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    @classmethod
    def describe(cls, input_names: list[str], params: Any, input_shapes: list[tuple[int, ...]]
                 ) -> list[str]:
        """The local derivative w.r.t. each input, with the inputs' names filled in."""
        return [part.format(*input_names) for part in cls.formula]


def register(op: type[Op]) -> type[Op]:
    """Class decorator: list a primitive op so that the op test suite checks its VJP."""
    REGISTRY[op.__name__] = op
    return op


def apply(op: type[Op], parents: tuple[Node, ...], **params: Any) -> Node:
    """Run `op` on the parents' values and record the result as a node of the graph."""
    out = op.forward(*[parent.data for parent in parents], **params)
    if type(out) is np.ndarray and out.ndim == 0:  # 0-d values are kept as numpy scalars
        out = out[()]
    if not _grad_mode.enabled:  # inside no_grad(): a leaf that remembers nothing
        return Node._result(out, None, (), NO_PARAMS, False)
    requires_grad = False
    for parent in parents:
        requires_grad = requires_grad or parent.requires_grad
    return Node._result(out, op, parents, params or NO_PARAMS, requires_grad)


# --- helpers that work on arrays and on Nodes alike -----------------------------------
def value(x: Any) -> Any:
    """The numpy value of a Node; anything else as it is."""
    return x.data if isinstance(x, Node) else x


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
        return apply(BroadcastTo, (x,), shape=tuple(shape))
    return np.broadcast_to(x, shape)


def where(condition: Any, a: Any, b: Any) -> Any:
    """a where condition holds, else b (numpy's where; the `where` op when a or b is a Node).

    Unlike `condition * a`, an infinite or NaN `a` where the condition fails gives b, not NaN.
    """
    condition = np.asarray(value(condition), dtype=bool)
    if isinstance(a, Node) or isinstance(b, Node):
        return apply(Where, _pair(a, b), condition=condition)
    out = np.where(condition, a, b)
    return out[()] if out.ndim == 0 else out


def log_of(x: Any) -> Any:
    """The natural logarithm of an array (numpy's) or of a Node (the log op)."""
    return x.log() if isinstance(x, Node) else np.log(x)


def exp_of(x: Any) -> Any:
    """e**x of an array (numpy's) or of a Node (the exp op)."""
    return x.exp() if isinstance(x, Node) else np.exp(x)


def _expand(upstream: Any, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Any:
    # A reduction's VJP: copy the upstream back along the reduced axes.
    if not keepdims:
        upstream = upstream.reshape(tuple(1 if i in axes else size for i, size in enumerate(shape)))
    return broadcast_to(upstream, shape)


# --- elementwise binary ops -----------------------------------------------------------
@register
class Add(Op):
    name = "add"
    formula = ("d/d{0} = 1", "d/d{1} = 1")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return a + b

    @staticmethod
    def backward(upstream, a, b, out):
        return unbroadcast(upstream, a.shape), unbroadcast(upstream, b.shape)


@register
class Sub(Op):
    name = "sub"
    formula = ("d/d{0} = 1", "d/d{1} = -1")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return a - b

    @staticmethod
    def backward(upstream, a, b, out):
        return unbroadcast(upstream, a.shape), -unbroadcast(upstream, b.shape)


@register
class Mul(Op):
    name = "mul"
    formula = ("d/d{0} = {1}", "d/d{1} = {0}")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return a * b

    @staticmethod
    def backward(upstream, a, b, out):
        return unbroadcast(upstream * b, a.shape), unbroadcast(upstream * a, b.shape)


@register
class Div(Op):
    name = "div"
    formula = ("d/d{0} = 1/{1}", "d/d{1} = -{0}/{1}^2")
    domain = ("real", "nonzero")

    @staticmethod
    def forward(a, b):
        return a / b

    @staticmethod
    def backward(upstream, a, b, out):
        # d(a/b)/db = -a/b^2 = -out/b
        return unbroadcast(upstream / b, a.shape), unbroadcast(-upstream * out / b, b.shape)


@register
class Pow(Op):
    """base ** exponent with both Nodes.

    d/d(base) = exponent * base^(exponent-1), taken as 0 where exponent == 0 (x^0 is the
    constant 1, also at x = 0). d/d(exponent) = out * log(base): 0 where base == 0 and
    exponent >= 0 (the limit), NaN for base < 0 (not smooth in the exponent there).
    """

    name = "pow"
    formula = ("d/d{0} = {1}*{0}^({1}-1)", "d/d{1} = {0}^{1}*log({0})")
    domain = ("positive", "real")

    @staticmethod
    def forward(base, exponent):
        return base**exponent

    @staticmethod
    def backward(upstream, base, exponent, out):
        b, e = value(base), value(exponent)
        with np.errstate(divide="ignore", invalid="ignore"):
            d_base = where(e == 0, 0.0, upstream * exponent * base ** (exponent - 1))
            d_exponent = where((b == 0) & (e >= 0), 0.0, upstream * out * log_of(base))
        return unbroadcast(d_base, base.shape), unbroadcast(d_exponent, exponent.shape)


@register
class PowConst(Op):
    """base ** p for a fixed number p (the exponent gets no gradient)."""

    name = "pow"
    formula = ("d/d{0} = p*{0}^(p-1)",)
    domain = ("positive",)

    @staticmethod
    def forward(base, *, p):
        return base**p

    @staticmethod
    def backward(upstream, base, out, *, p):
        if p == 0:  # x^0 is the constant 1: no gradient, even at x = 0 where 0^-1 is inf
            return (where(True, 0.0, upstream),)
        return (upstream * (p * base ** (p - 1)),)

    @classmethod
    def describe(cls, input_names, params, input_shapes):
        p, name = params["p"], input_names[0]
        if p == 2:
            return [f"d/d{name} = 2*{name}"]
        return [f"d/d{name} = {p:g}*{name}^{p - 1:g}"]


@register
class MatMul(Op):
    name = "matmul"
    formula = ("d/d{0} = upstream @ {1}.T", "d/d{1} = {0}.T @ upstream")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return a @ b

    @staticmethod
    def backward(upstream, a, b, out):
        # numpy treats a 1-D a as a row (1, k) and a 1-D b as a column (k, 1), then drops
        # that axis from the result: do the same, so one matrix rule covers every case.
        a2 = a.reshape(1, -1) if a.ndim == 1 else a
        b2 = b.reshape(-1, 1) if b.ndim == 1 else b
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        g = upstream.reshape((*batch, a2.shape[-2], b2.shape[-1]))
        da = g @ _swap_last(b2)
        db = _swap_last(a2) @ g
        return unbroadcast(da, a2.shape).reshape(a.shape), unbroadcast(db, b2.shape).reshape(b.shape)


def _swap_last(m: Any) -> Any:
    # The matrix transpose of the last two axes (batch axes stay).
    return m.transpose(*range(m.ndim - 2), m.ndim - 1, m.ndim - 2)


@register
class Where(Op):
    """where(condition, a, b) for a fixed boolean condition (which gets no gradient)."""

    name = "where"
    formula = ("d/d{0} = 1 where the condition holds, else 0",
               "d/d{1} = 1 where the condition fails, else 0")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b, *, condition):
        return np.where(condition, a, b)

    @staticmethod
    def backward(upstream, a, b, out, *, condition):
        return (unbroadcast(where(condition, upstream, 0.0), a.shape),
                unbroadcast(where(condition, 0.0, upstream), b.shape))


# --- elementwise unary ops ------------------------------------------------------------
@register
class Identity(Op):
    """The same value as a node of its own (names a gradient that another node also is)."""

    name = "identity"
    formula = ("d/d{0} = 1",)
    domain = ("real",)

    @staticmethod
    def forward(a):
        return a

    @staticmethod
    def backward(upstream, a, out):
        return (upstream,)


@register
class Neg(Op):
    name = "neg"
    formula = ("d/d{0} = -1",)
    domain = ("real",)

    @staticmethod
    def forward(a):
        return -a

    @staticmethod
    def backward(upstream, a, out):
        return (-upstream,)


@register
class Sqrt(Op):
    name = "sqrt"
    formula = ("d/d{0} = 1/(2*sqrt({0}))",)
    domain = ("positive",)

    @staticmethod
    def forward(a):
        return np.sqrt(a)

    @staticmethod
    def backward(upstream, a, out):
        return (upstream / (2 * out),)


@register
class Exp(Op):
    name = "exp"
    formula = ("d/d{0} = exp({0})",)
    domain = ("real",)

    @staticmethod
    def forward(a):
        return np.exp(a)

    @staticmethod
    def backward(upstream, a, out):
        return (upstream * out,)


@register
class Log(Op):
    name = "log"
    formula = ("d/d{0} = 1/{0}",)
    domain = ("positive",)

    @staticmethod
    def forward(a):
        return np.log(a)

    @staticmethod
    def backward(upstream, a, out):
        return (upstream / a,)


@register
class Relu(Op):
    name = "relu"
    formula = ("d/d{0} = 1 where {0} > 0, else 0",)
    domain = ("kinked_at_zero",)

    @staticmethod
    def forward(a):
        return np.maximum(a, 0)  # relu(-inf) = 0, relu(nan) = nan, as in PyTorch

    @staticmethod
    def backward(upstream, a, out):
        return (where(a > 0, upstream, 0.0),)  # an inactive unit passes nothing, even inf


@register
class Tanh(Op):
    name = "tanh"
    formula = ("d/d{0} = 1 - tanh({0})^2",)
    domain = ("real",)

    @staticmethod
    def forward(a):
        return np.tanh(a)

    @staticmethod
    def backward(upstream, a, out):
        return (upstream * (1 - out * out),)


# --- reductions and shape ops ---------------------------------------------------------
@register
class Sum(Op):
    name = "sum"
    formula = ("d/d{0} = 1 (copied along the summed axes)",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, axis, keepdims):
        return a.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(upstream, a, out, *, axis, keepdims):
        return (_expand(upstream, a.shape, axis, keepdims),)


@register
class Mean(Op):
    name = "mean"
    formula = ("d/d{0} = 1/N (copied along the averaged axes)",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, axis, keepdims):
        return a.sum(axis=axis, keepdims=keepdims) / _count(a.shape, axis)

    @staticmethod
    def backward(upstream, a, out, *, axis, keepdims):
        return (_expand(upstream / _count(a.shape, axis), a.shape, axis, keepdims),)

    @classmethod
    def describe(cls, input_names, params, input_shapes):
        count = _count(input_shapes[0], params["axis"])
        return [f"d/d{input_names[0]} = 1/N with N={count} (copied along the averaged axes)"]


def _count(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    # How many values a mean over `axes` averages (N).
    return math.prod(shape[i] for i in axes)


@register
class BroadcastTo(Op):
    name = "broadcast_to"
    formula = ("d/d{0} = 1 (summed over the broadcast axes)",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, shape):
        return np.broadcast_to(a, shape)

    @staticmethod
    def backward(upstream, a, out, *, shape):
        return (unbroadcast(upstream, a.shape),)


@register
class Cast(Op):
    """The same values in another float dtype (float32 <-> float64)."""

    name = "cast"
    formula = ("d/d{0} = 1 (cast back to {0}'s dtype)",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, dtype):
        return a.astype(dtype)

    @staticmethod
    def backward(upstream, a, out, *, dtype):
        return (upstream.astype(a.dtype),)


@register
class Reshape(Op):
    name = "reshape"
    formula = ("d/d{0} = upstream reshaped back",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, shape):
        return a.reshape(shape)

    @staticmethod
    def backward(upstream, a, out, *, shape):
        return (upstream.reshape(a.shape),)


@register
class Transpose(Op):
    name = "transpose"
    formula = ("d/d{0} = upstream transposed back",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, axes):
        return a.transpose(axes)

    @staticmethod
    def backward(upstream, a, out, *, axes):
        return (upstream.transpose(tuple(np.argsort(axes).tolist())),)


# --- argument checks ------------------------------------------------------------------
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


# --- operands -------------------------------------------------------------------------
_number_constants: dict[tuple[Any, ...], Constant] = {}


def _constant(number: Any, dtype: np.dtype) -> Node:
    # A Python number takes the other operand's dtype, so `x32 * 2.0` stays float32. A
    # Constant is immutable, so one per number and dtype serves every use.
    kind = type(number)
    if kind is float or kind is int:
        key = (number, kind, dtype) if number else (number, kind, dtype, math.copysign(1, number))
        node = _number_constants.get(key)  # (0.0 and -0.0 are equal keys: the sign tells them apart)
        if node is None:
            node = Constant(np.asarray(number, dtype=dtype))
            if len(_number_constants) < 1024:
                _number_constants[key] = node
        return node
    return _node(number)


def _node(a: Any) -> Node:
    return a if isinstance(a, Node) else Node(a, requires_grad=False)


def _pair(a: Any, b: Any) -> tuple[Node, Node]:
    if isinstance(a, Node):
        return a, b if isinstance(b, Node) else _constant(b, a.dtype)
    if isinstance(b, Node):
        return _constant(a, b.dtype), b
    return _node(a), _node(b)


# --- the functional API (what Node's operators call) ----------------------------------
def add(a: Any, b: Any) -> Node:
    """a + b with numpy broadcasting; gradients reduced back to each input's shape."""
    return apply(Add, _pair(a, b))


def sub(a: Any, b: Any) -> Node:
    """a - b with broadcasting."""
    return apply(Sub, _pair(a, b))


def mul(a: Any, b: Any) -> Node:
    """a * b with broadcasting."""
    return apply(Mul, _pair(a, b))


def div(a: Any, b: Any) -> Node:
    """a / b with broadcasting."""
    return apply(Div, _pair(a, b))


def pow(base: Any, exponent: Any) -> Node:  # noqa: A001 - mirrors the operator's name
    """base ** exponent; a number exponent is a constant, a Node exponent gets a gradient."""
    if isinstance(exponent, numbers.Real) and not isinstance(exponent, (bool, np.ndarray)):
        return apply(PowConst, (_node(base),), p=float(exponent))
    return apply(Pow, _pair(base, exponent))


def identity(a: Any) -> Node:
    """a itself, as a node of its own."""
    return apply(Identity, (_node(a),))


def neg(a: Any) -> Node:
    """-a."""
    return apply(Neg, (_node(a),))


def sqrt(a: Any) -> Node:
    """Elementwise square root."""
    return apply(Sqrt, (_node(a),))


def exp(a: Any) -> Node:
    """Elementwise e**a."""
    return apply(Exp, (_node(a),))


def log(a: Any) -> Node:
    """Elementwise natural logarithm."""
    return apply(Log, (_node(a),))


def relu(a: Any) -> Node:
    """max(a, 0); its derivative at 0 is taken as 0."""
    return apply(Relu, (_node(a),))


def tanh(a: Any) -> Node:
    """Elementwise hyperbolic tangent."""
    return apply(Tanh, (_node(a),))


def sum(a: Any, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """Sum over `axis` (None: all axes); (N, D) -> (D,) for axis=0."""
    a = _node(a)
    return apply(Sum, (a,), axis=normalize_axis(axis, a.ndim), keepdims=bool(keepdims))


def mean(a: Any, axis: Axis = None, keepdims: bool = False) -> Node:
    """Mean over `axis` (None: all axes); (N, D) -> (1, D) for axis=0, keepdims=True."""
    a = _node(a)
    return apply(Mean, (a,), axis=normalize_axis(axis, a.ndim), keepdims=bool(keepdims))


def reshape(a: Any, shape: tuple[int, ...]) -> Node:
    """numpy reshape (one -1 allowed); raises ValueError naming `shape` when it does not fit."""
    try:
        return apply(Reshape, (_node(a),), shape=tuple(builtins.int(s) for s in shape))
    except (TypeError, ValueError) as error:
        raise ValueError(f"reshape: shape {tuple(shape)} does not fit an input of shape "
                         f"{np.shape(value(a))} ({error})") from None


def astype(a: Any, dtype: Any) -> Node:
    """a in dtype float32 or float64 (a node of its own even when the dtype is the same)."""
    a = _node(a)
    target = np.dtype(dtype)
    if target not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float32 or float64, got {target}")
    return apply(Cast, (a,), dtype=target)


def transpose(a: Any, axes: tuple[int, ...] | None = None) -> Node:
    """Permute axes; None reverses them. (N, D) -> (D, N)."""
    a = _node(a)
    order = tuple(range(a.ndim))[::-1] if axes is None else normalize_axis_order(axes, a.ndim)
    return apply(Transpose, (a,), axes=order)


def matmul(a: Any, b: Any) -> Node:
    """a @ b with numpy's matmul rules (1-D operands, batch broadcasting)."""
    return apply(MatMul, _pair(a, b))

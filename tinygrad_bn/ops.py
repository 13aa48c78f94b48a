"""Primitive ops: each is one class holding its forward and its vector-Jacobian product.

An op's `forward(*arrays, **params)` returns `(out, saved)`; its `backward(upstream, saved)`
returns one gradient per parent (None for "no gradient"). `saved` holds arrays and
shapes only, never Nodes, so a graph has no reference cycles. Every op that broadcasts
reduces its gradients back to the input shapes with the single `unbroadcast` helper.

`formula` is the local derivative w.r.t. each parent as text, with {0}, {1} standing
for the parents' names; `explain` and the viewer show it. `domain` says where the op is smooth, for
the gradient tests: "real", "positive", "nonzero" or "kinked_at_zero".
"""

from __future__ import annotations

import builtins
import functools
import math
import numbers
import operator
from typing import Any, ClassVar

import numpy as np

from . import workspace
from .node import Node, _grad_mode, as_float_array

__all__ = [
    "Op", "REGISTRY", "apply", "record", "unbroadcast", "normalize_axis",
    "add", "sub", "mul", "div", "pow", "neg", "sqrt", "exp", "log", "relu", "tanh",
    "sum", "mean", "reshape", "transpose", "matmul",
]

Axis = int | tuple[int, ...] | None
REGISTRY: dict[str, type[Op]] = {}


class Op:
    """Base of every op. Subclasses set `name`, `formula`, `domain` and the two methods."""

    name: ClassVar[str] = ""
    formula: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def forward(*arrays: np.ndarray, **params: Any) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    @staticmethod
    def backward(upstream: np.ndarray, saved: Any) -> tuple[np.ndarray | None, ...]:
        raise NotImplementedError

    @classmethod
    def describe(cls, parent_names: list[str], saved: Any) -> list[str]:
        """The local derivative w.r.t. each parent, with the parents' names filled in."""
        return [part.format(*parent_names) for part in cls.formula]


def register(op: type[Op]) -> type[Op]:
    """Class decorator: list a primitive op so the op test suite checks its VJP."""
    REGISTRY[op.__name__] = op
    return op


def apply(op: type[Op], parents: tuple[Node, ...], **params: Any) -> Node:
    """Run `op` on the parents' data and record the result node (unless in no_grad)."""
    out, saved = op.forward(*[parent.data for parent in parents], **params)
    return record(op, parents, out, saved)


def _apply2(op: type[Op], pair: tuple[Node, Node]) -> Node:
    # apply() for the binary ops without parameters: the scalar-graph hot path.
    out, saved = op.forward(pair[0].data, pair[1].data)
    return record(op, pair, out, saved)


def record(op: type[Op], parents: tuple[Node, ...], out: Any, saved: Any) -> Node:
    """Wrap an op's forward result as a node of the graph (a constant leaf under no_grad)."""
    if type(out) is np.ndarray and out.ndim == 0:  # 0-d values are kept as numpy scalars
        out = out[()]
    if not _grad_mode.enabled:
        return Node._result(out, None, (), None, False)
    requires_grad = False
    for parent in parents:
        if parent.requires_grad:
            requires_grad = True
            break
    return Node._result(out, op, parents, saved, requires_grad)


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` over the axes that numpy broadcasting added or stretched, back to `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    # np.add.reduce, not .sum(): the method goes through a Python wrapper first.
    if extra:
        grad = np.add.reduce(grad, axis=tuple(range(extra)))
    stretched = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if stretched:
        grad = np.add.reduce(grad, axis=stretched, keepdims=True)
    return grad


_OPERATORS = {np.add: operator.add, np.subtract: operator.sub, np.multiply: operator.mul,
              np.divide: operator.truediv, np.negative: operator.neg}


def pooled(ufunc: np.ufunc, *operands: Any) -> np.ndarray:  # one or two operands
    """ufunc(*operands); a large result is written into a recycled workspace buffer.

    (A fresh large array is fresh pages that fault in on first touch; in a training loop
    the staged graph's intermediates of the previous step are free again by the next.)
    """
    if operands[0].nbytes < workspace.MIN_BYTES and operands[-1].nbytes < workspace.MIN_BYTES:
        # The operator, not the ufunc: on numpy scalars it is ten times cheaper.
        return _OPERATORS[ufunc](*operands)
    first = operands[0]
    if len(operands) == 1:
        return ufunc(first, out=workspace.empty(first.shape, first.dtype))
    second = operands[1]
    shape = first.shape if first.shape == second.shape else _broadcast(first.shape, second.shape)
    dtype = first.dtype if first.dtype == second.dtype else np.result_type(first, second)
    return ufunc(first, second, out=workspace.empty(shape, dtype))


@functools.lru_cache(maxsize=256)
def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return np.broadcast_shapes(a, b)


def _pooled_binary(ufunc: np.ufunc) -> Any:
    # The hot path of every binary op, specialised so that small operands cost one check.
    small = _OPERATORS[ufunc]
    limit = workspace.MIN_BYTES

    def run(a: Any, b: Any, out: np.ndarray | None = None) -> Any:
        if out is not None:
            return ufunc(a, b, out=out)
        if a.nbytes < limit and b.nbytes < limit:
            return small(a, b)
        return pooled(ufunc, a, b)

    return run


_add, _sub, _mul, _div = (_pooled_binary(f) for f in (np.add, np.subtract, np.multiply, np.divide))
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def product_reduced(upstream: np.ndarray, other: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """unbroadcast(upstream * other, shape), without the full-size product when it is summed.

    (gamma's gradient in gamma * xhat is sum(upstream * xhat) over the batch: einsum forms
    the sum directly instead of allocating upstream * xhat first.)
    """
    if shape == upstream.shape or np.shape(other) != upstream.shape or upstream.ndim > 26:
        return unbroadcast(pooled(np.multiply, upstream, other), shape)
    return np.einsum(_reduction_subscripts(upstream.ndim, shape), upstream, other).reshape(shape)


@functools.lru_cache(maxsize=256)
def _reduction_subscripts(ndim: int, shape: tuple[int, ...]) -> str:
    # "ab,ab->b" for a (D,) parameter of a (N, D) input: keep the axes `shape` keeps.
    offset = ndim - len(shape)
    kept = [i for i in range(offset, ndim) if shape[i - offset] != 1]
    letters = _LETTERS[:ndim]
    return f"{letters},{letters}->{''.join(letters[i] for i in kept)}"


def normalize_axis(axis: Axis, ndim: int, argname: str = "axis") -> tuple[int, ...]:
    """Turn None/int/tuple into a sorted tuple of non-negative axes, or raise ValueError."""
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
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    result = []
    for a in axes:
        if not isinstance(a, numbers.Integral) or isinstance(a, bool):
            raise TypeError(f"{argname}: expected int or tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{argname}: expected values in [{-ndim}, {ndim}) for an input with {ndim} "
                f"dimensions, got {axis!r}"
            )
        result.append(int(a) % ndim if ndim else 0)
    if len(set(result)) != len(result):
        raise ValueError(f"{argname}: repeated axis in {axis!r}")
    return tuple(sorted(result))


_constants: dict[tuple[Any, ...], Node] = {}


def _constant(value: Any, dtype: np.dtype) -> Node:
    # A Python number takes the other operand's dtype, so `x32 * 2.0` stays float32. Such a
    # leaf is immutable (no gradient, no parents), so one node per number and dtype serves
    # every use: `y * 0.5` in a loop does not create a new constant node each time.
    kind = type(value)
    if kind is float or kind is int:
        key = (kind, value, math.copysign(1.0, value), dtype)  # keeps 0.0 and -0.0 apart
        node = _constants.get(key)
        if node is None:
            node = Node._result(dtype.type(value), None, (), None, False)
            if len(_constants) < 1024:
                _constants[key] = node
        return node
    return Node(as_float_array(value, "operand"), requires_grad=False)


def _pair(a: Any, b: Any) -> tuple[Node, Node]:
    if isinstance(a, Node):
        if not isinstance(b, Node):
            b = _constant(b, a.data.dtype)
    elif isinstance(b, Node):
        a = _constant(a, b.data.dtype)
    else:
        a, b = Node(a, requires_grad=False), Node(b, requires_grad=False)
    return a, b


def _node(a: Any) -> Node:
    return a if isinstance(a, Node) else Node(a, requires_grad=False)


# --- elementwise binary ops -----------------------------------------------------------
@register
class Add(Op):
    name = "add"
    formula = ("d/d{0} = 1", "d/d{1} = 1")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return _add(a, b), (a.shape, b.shape)

    @staticmethod
    def backward(upstream, saved):
        a_shape, b_shape = saved
        return unbroadcast(upstream, a_shape), unbroadcast(upstream, b_shape)


@register
class Sub(Op):
    name = "sub"
    formula = ("d/d{0} = 1", "d/d{1} = -1")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return _sub(a, b), (a.shape, b.shape)

    @staticmethod
    def backward(upstream, saved):
        a_shape, b_shape = saved
        # Negate after reducing: a broadcast b (x - mean) then needs no full-size temporary.
        return unbroadcast(upstream, a_shape), pooled(np.negative, unbroadcast(upstream, b_shape))


@register
class Mul(Op):
    name = "mul"
    formula = ("d/d{0} = {1}", "d/d{1} = {0}")
    domain = ("real", "real")

    @staticmethod
    def forward(a, b):
        return _mul(a, b), (a, b)

    @staticmethod
    def backward(upstream, saved):
        a, b = saved
        if upstream.ndim == 0:  # scalars: nothing to reduce
            return upstream * b, upstream * a
        return product_reduced(upstream, b, a.shape), product_reduced(upstream, a, b.shape)


@register
class Div(Op):
    name = "div"
    formula = ("d/d{0} = 1/{1}", "d/d{1} = -{0}/{1}^2")
    domain = ("real", "nonzero")

    @staticmethod
    def forward(a, b):
        return _div(a, b), (a, b)

    @staticmethod
    def backward(upstream, saved):
        a, b = saved
        scaled = upstream / b
        return unbroadcast(scaled, a.shape), unbroadcast(-scaled * a / b, b.shape)


@register
class Pow(Op):
    """base ** exponent with both Nodes.

    d/d(exponent) = out * log(base) needs log(base): for base > 0 it is that; for base == 0
    it is 0 (the limit of 0**p * log 0 for p > 0); for base < 0 the power is not a smooth
    function of the exponent and the gradient is NaN.
    """

    name = "pow"
    formula = ("d/d{0} = {1}*{0}^({1}-1)", "d/d{1} = {0}^{1}*log({0})")
    domain = ("positive", "real")

    @staticmethod
    def forward(base, exponent):
        out = base**exponent
        return out, (base, exponent, out)

    @staticmethod
    def backward(upstream, saved):
        base, exponent, out = saved
        d_base = upstream * exponent * base ** (exponent - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_base = np.where(base > 0, np.log(np.where(base > 0, base, 1)), 0.0)
            log_base = np.where(base < 0, np.nan, log_base)
        d_exponent = upstream * out * log_base
        return unbroadcast(d_base, base.shape), unbroadcast(d_exponent, exponent.shape)


@register
class PowConst(Op):
    """base ** p for a fixed number p (the exponent is not differentiated)."""

    name = "pow"
    formula = ("d/d{0} = p*{0}^(p-1)",)
    domain = ("positive",)

    @staticmethod
    def forward(base, *, exponent):
        if exponent == 2:
            return pooled(np.multiply, base, base), (base, exponent)
        return base**exponent, (base, exponent)

    @staticmethod
    def backward(upstream, saved):
        base, p = saved
        if p == 2:  # the common case (variance): skip the power and a temporary
            grad = pooled(np.multiply, upstream, base)
            grad *= 2  # our own fresh array
            return (grad,)
        return (upstream * p * base ** (p - 1),)

    @classmethod
    def describe(cls, parent_names, saved):
        p = saved[1]
        name = parent_names[0]
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
        return a @ b, (a, b)

    @staticmethod
    def backward(upstream, saved):
        a, b = saved
        if a.ndim == 1 and b.ndim == 1:  # inner product: a 0-d upstream
            return upstream * b, upstream * a
        # Promote 1-D operands to matrices as numpy's matmul does, then undo it.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = upstream
        if a.ndim == 1:
            g = np.expand_dims(g, -2)
        if b.ndim == 1:
            g = np.expand_dims(g, -1)
        da = g @ np.swapaxes(b2, -1, -2)
        db = np.swapaxes(a2, -1, -2) @ g
        if a.ndim == 1:
            da = da[..., 0, :]
        if b.ndim == 1:
            db = db[..., :, 0]
        return unbroadcast(da, a.shape), unbroadcast(db, b.shape)


# --- elementwise unary ops ------------------------------------------------------------
@register
class Neg(Op):
    name = "neg"
    formula = ("d/d{0} = -1",)
    domain = ("real",)

    @staticmethod
    def forward(a):
        return pooled(np.negative, a), None

    @staticmethod
    def backward(upstream, saved):
        return (pooled(np.negative, upstream),)


@register
class Sqrt(Op):
    name = "sqrt"
    formula = ("d/d{0} = 1/(2*sqrt({0}))",)
    domain = ("positive",)

    @staticmethod
    def forward(a):
        out = np.sqrt(a)
        return out, out

    @staticmethod
    def backward(upstream, out):
        return (upstream / (2 * out),)


@register
class Exp(Op):
    name = "exp"
    formula = ("d/d{0} = exp({0})",)
    domain = ("real",)

    @staticmethod
    def forward(a):
        out = np.exp(a)
        return out, out

    @staticmethod
    def backward(upstream, out):
        return (upstream * out,)


@register
class Log(Op):
    name = "log"
    formula = ("d/d{0} = 1/{0}",)
    domain = ("positive",)

    @staticmethod
    def forward(a):
        return np.log(a), a

    @staticmethod
    def backward(upstream, a):
        return (upstream / a,)


@register
class Relu(Op):
    name = "relu"
    formula = ("d/d{0} = 1 where {0} > 0, else 0",)
    domain = ("kinked_at_zero",)

    @staticmethod
    def forward(a):
        positive = a > 0
        return a * positive, positive

    @staticmethod
    def backward(upstream, positive):
        return (upstream * positive,)


@register
class Tanh(Op):
    name = "tanh"
    formula = ("d/d{0} = 1 - tanh({0})^2",)
    domain = ("real",)

    @staticmethod
    def forward(a):
        out = np.tanh(a)
        return out, out

    @staticmethod
    def backward(upstream, out):
        return (upstream * (1 - out * out),)


# --- reductions and shape ops ---------------------------------------------------------
def _expand_reduced(upstream: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...],
                    keepdims: bool) -> np.ndarray:
    # The VJP of a reduction copies the upstream back along the reduced axes: a read-only
    # view with stride 0 there (built directly; np.broadcast_to costs more than the math).
    upstream = np.ascontiguousarray(upstream)
    if not keepdims:
        upstream = upstream.reshape([1 if i in axes else size for i, size in enumerate(shape)])
    strides = tuple(0 if size == 1 and full != 1 else stride
                    for size, full, stride in zip(upstream.shape, shape, upstream.strides))
    view = np.ndarray(shape, upstream.dtype, buffer=upstream, strides=strides)
    view.flags.writeable = False
    return view


@register
class Sum(Op):
    name = "sum"
    formula = ("d/d{0} = 1 (copied along the summed axes)",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, axis, keepdims):
        axes = normalize_axis(axis, a.ndim)
        return np.add.reduce(a, axis=axes, keepdims=keepdims), (a.shape, axes, keepdims)

    @staticmethod
    def backward(upstream, saved):
        shape, axes, keepdims = saved
        return (_expand_reduced(upstream, shape, axes, keepdims),)


@register
class Mean(Op):
    name = "mean"
    formula = ("d/d{0} = 1/N (copied along the averaged axes)",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, axis, keepdims):
        axes = normalize_axis(axis, a.ndim)
        count = 1
        for i in axes:
            count *= a.shape[i]
        # Sum, then divide, as ndarray.mean does (without its Python-level wrapper).
        total = np.add.reduce(a, axis=axes, keepdims=keepdims)
        return (total / count if count else total * np.nan), (a.shape, axes, keepdims, count)

    @staticmethod
    def backward(upstream, saved):
        shape, axes, keepdims, count = saved
        return (_expand_reduced(upstream / count, shape, axes, keepdims),)

    @classmethod
    def describe(cls, parent_names, saved):
        return [f"d/d{parent_names[0]} = 1/N with N={saved[3]} (copied along the averaged axes)"]


@register
class Reshape(Op):
    name = "reshape"
    formula = ("d/d{0} = upstream reshaped back",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, shape):
        try:
            return a.reshape(shape), a.shape
        except ValueError as error:
            raise ValueError(f"reshape: shape {shape} does not fit an input of shape "
                             f"{a.shape} ({error})") from None

    @staticmethod
    def backward(upstream, shape):
        return (upstream.reshape(shape),)


@register
class Transpose(Op):
    name = "transpose"
    formula = ("d/d{0} = upstream transposed back",)
    domain = ("real",)

    @staticmethod
    def forward(a, *, axes):
        axes = tuple(range(a.ndim))[::-1] if axes is None else normalize_axis_order(axes, a.ndim)
        return a.transpose(axes), np.argsort(axes)

    @staticmethod
    def backward(upstream, inverse):
        return (upstream.transpose(inverse),)


def normalize_axis_order(axes: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Validate a permutation of range(ndim) (negative axes allowed)."""
    order = tuple(int(a) % ndim for a in axes) if ndim else ()
    if sorted(order) != list(range(ndim)):
        raise ValueError(f"axes: expected a permutation of 0..{ndim - 1}, got {axes!r}")
    return order


# --- the functional API (what Node's operators call) ----------------------------------
def add(a: Any, b: Any) -> Node:
    """a + b with numpy broadcasting; gradients reduced back to each input's shape."""
    return _apply2(Add, _pair(a, b))


def sub(a: Any, b: Any) -> Node:
    """a - b with broadcasting."""
    return _apply2(Sub, _pair(a, b))


def mul(a: Any, b: Any) -> Node:
    """a * b with broadcasting."""
    return _apply2(Mul, _pair(a, b))


def div(a: Any, b: Any) -> Node:
    """a / b with broadcasting."""
    return _apply2(Div, _pair(a, b))


def pow(base: Any, exponent: Any) -> Node:  # noqa: A001 - mirrors the operator's name
    """base ** exponent; a number exponent is a constant, a Node exponent gets a gradient."""
    if isinstance(exponent, numbers.Real) and not isinstance(exponent, (bool, np.ndarray)):
        return apply(PowConst, (_node(base),), exponent=float(exponent))
    return apply(Pow, _pair(base, exponent))


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
    return apply(Sum, (_node(a),), axis=axis, keepdims=keepdims)


def mean(a: Any, axis: Axis = None, keepdims: bool = False) -> Node:
    """Mean over `axis` (None: all axes); (N, D) -> (1, D) for axis=0, keepdims=True."""
    return apply(Mean, (_node(a),), axis=axis, keepdims=keepdims)


def reshape(a: Any, shape: tuple[int, ...]) -> Node:
    """numpy reshape (one -1 allowed)."""
    return apply(Reshape, (_node(a),), shape=tuple(builtins.int(s) for s in shape))


def transpose(a: Any, axes: tuple[int, ...] | None = None) -> Node:
    """Permute axes; None reverses them."""
    return apply(Transpose, (_node(a),), axes=axes)


def matmul(a: Any, b: Any) -> Node:
    """a @ b with numpy's matmul rules (1-D operands, batch broadcasting)."""
    return _apply2(MatMul, _pair(a, b))

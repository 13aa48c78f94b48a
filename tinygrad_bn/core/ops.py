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

import math
from typing import Any, ClassVar

import numpy as np

# The op classes import no Node: `dual.py`'s helpers record on a Node through its own
# methods, and `functional.py` records the ops (Node's operators call it).
from .dual import broadcast_to, exp_of, log_of, unbroadcast, value, where
from .seams import seam

# The helpers VJPs are written with are part of this page's vocabulary, so they are listed too.
__all__ = ["Op", "OPS", "register", "value", "unbroadcast", "broadcast_to", "where", "log_of",
           "exp_of"]
OPS: dict[str, type[Op]] = {}
REGISTRY = OPS  # deprecated name: OPS


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
    OPS[op.__name__] = op
    return op


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
    @seam
    def backward(upstream, a, b, out):
        """Seam: fast/ops.py may stand in (einsum-summed products for large broadcast operands)."""
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
    @seam
    def forward(base, *, p):
        """Seam: fast/ops.py may stand in (a square as one multiplication)."""
        return base**p

    @staticmethod
    @seam
    def backward(upstream, base, out, *, p):
        """Seam: fast/ops.py may stand in (a large square's gradient in one temporary)."""
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

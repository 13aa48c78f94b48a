"""Batch normalization, built twice.

*Staged*: from primitive ops, one named node per step of the classic backprop diagram
(mu, xmu, sq, var, var_eps, sqrtvar, ivar, xhat, gammax, out), so every intermediate
gradient can be inspected. *Fused*: one `batchnorm` node whose VJP is the closed form

    dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)),   g = upstream * gamma

with the means over the reduced axes. Both share the argument checks in `NormSpec`,
so the same code normalizes (N, D) over axis 0 and (N, C, H, W) over (0, 2, 3); layer
and group norm are the same machinery with other axes.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels
from .node import Node
from .ops import Op, _mul, _sub, apply, normalize_axis, product_reduced

__all__ = [
    "NormSpec", "STAGE_NAMES", "NORMS", "norm_spec", "norm_staged", "norm_fused",
    "batchnorm_spec", "batchnorm_staged", "batchnorm_fused",
    "layernorm_spec", "layernorm_staged", "layernorm_fused",
    "spatial_batchnorm_spec", "spatial_batchnorm_staged", "spatial_batchnorm_fused",
    "groupnorm_spec", "groupnorm_staged", "groupnorm_fused",
]

# The staged graph's node names, in forward order.
STAGE_NAMES = ("mu", "xmu", "sq", "var", "var_eps", "sqrtvar", "ivar", "xhat", "gammax", "out")


def check_eps(eps: Any) -> float:
    """eps must be a finite number > 0 (it keeps 1/sqrt(var + eps) finite)."""
    if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
            or not math.isfinite(eps) or eps <= 0):
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    return float(eps)


@dataclass(frozen=True)
class NormSpec:
    """Where a normalization reduces and what shape its gamma/beta have.

    reduce_axes: axes of x averaged over (of `grouped_shape` when grouping).
    param_shape: shape gamma and beta must have, e.g. (D,) or (C,).
    param_bshape: that shape with 1s inserted so it broadcasts against x, e.g. (1, C, 1, 1).
    grouped_shape: for group norm, the shape x is viewed as while normalizing; else None.
    """

    kind: str
    x_shape: tuple[int, ...]
    reduce_axes: tuple[int, ...]
    param_shape: tuple[int, ...]
    param_bshape: tuple[int, ...]
    eps: float
    grouped_shape: tuple[int, ...] | None = None

    @property
    def count(self) -> int:
        """How many values each mean averages over (N for (N, D) batch norm)."""
        shape = self.grouped_shape or self.x_shape
        return int(np.prod([shape[a] for a in self.reduce_axes]))

    def check_params(self, gamma: Node, beta: Node) -> None:
        """Raise ValueError naming gamma/beta unless they have the feature shape."""
        for argname, param in (("gamma", gamma), ("beta", beta)):
            if param.shape not in (self.param_shape, self.param_bshape):
                raise ValueError(
                    f"{argname}: expected shape {self.param_shape} (the {self.kind} feature "
                    f"axes of x with shape {self.x_shape}), got shape {param.shape}"
                )

    def check_nonempty(self) -> None:
        shape = self.grouped_shape or self.x_shape
        if self.count == 0:
            raise ValueError(
                f"x: the reduced axes {self.reduce_axes} of shape {shape} hold no values "
                f"(an empty batch); normalization needs at least one"
            )


def as_node(value: Any, argname: str) -> Node:
    """Accept a Node or anything array-like (wrapped as a constant)."""
    if isinstance(value, Node):
        return value
    try:
        return Node(value, requires_grad=False)
    except TypeError as error:
        raise TypeError(str(error).replace("data:", f"{argname}:", 1)) from None


def batchnorm_spec(x_shape: tuple[int, ...], axis: Any = None, eps: Any = 1e-5) -> NormSpec:
    """Check batch-norm arguments and say where it reduces.

    axis=None means 0 for (N, D) input and (0, 2, 3) for (N, C, H, W); gamma and beta
    cover the axes that are kept.
    """
    if type(axis) is list:
        axis = tuple(axis)
    try:
        # The types are part of the key: True == 1 and hash alike, but only one is valid.
        return _batchnorm_spec(tuple(x_shape), axis, eps, type(axis), type(eps))
    except TypeError as error:
        if "unhashable" not in str(error):
            raise
        raise TypeError(f"axis: expected int or tuple of ints, got {axis!r}") from None


@functools.lru_cache(maxsize=256)
def _batchnorm_spec(x_shape: tuple[int, ...], axis: Any, eps: Any, *_types: type) -> NormSpec:
    # Cached: a training loop asks for the same spec every step (a NormSpec is immutable).
    ndim = len(x_shape)
    if axis is None:
        if ndim == 2:
            axis = 0
        elif ndim == 4:
            axis = (0, 2, 3)
        else:
            raise ValueError(
                f"axis: no default for x with {ndim} dimensions (shape {x_shape}); "
                f"batch norm defaults to 0 for (N, D) and (0, 2, 3) for (N, C, H, W), pass axis"
            )
    if ndim == 0:
        raise ValueError("x: expected an array with a batch axis, got a 0-d scalar")
    reduce_axes = normalize_axis(axis, ndim)
    kept = tuple(a for a in range(ndim) if a not in reduce_axes)
    spec = NormSpec(
        kind="batch norm",
        x_shape=tuple(x_shape),
        reduce_axes=reduce_axes,
        param_shape=tuple(x_shape[a] for a in kept),
        param_bshape=tuple(x_shape[a] if a in kept else 1 for a in range(ndim)),
        eps=check_eps(eps),
    )
    spec.check_nonempty()
    return spec


# --- staged ---------------------------------------------------------------------------
def broadcastable(param: Node, spec: NormSpec) -> Node:
    # numpy aligns trailing axes, so (D,) already broadcasts against (N, D); (C,) against
    # (N, C, H, W) needs an explicit reshape node to (1, C, 1, 1).
    if param.shape == spec.param_bshape:
        return param
    if spec.param_bshape[len(spec.param_bshape) - len(param.shape):] == param.shape and all(
        size == 1 for size in spec.param_bshape[: len(spec.param_bshape) - len(param.shape)]
    ):
        return param
    return param.reshape(spec.param_bshape).named(f"{param.name or 'param'}_b")


@functools.lru_cache(maxsize=64)
def _named_constant(value: float, name: str, dtype: np.dtype) -> Node:
    # Immutable leaves (no gradient, no parents), so one per value serves every graph.
    return Node(np.asarray(value, dtype=dtype), name=name, requires_grad=False)


def _constant(value: float, name: str, like: Node) -> Node:
    # Named so that `explain` and the viewer can say "var + eps" rather than "var + 1e-05".
    return _named_constant(value, name, like.dtype)


def staged_nodes(x: Node, gamma: Node, beta: Node, spec: NormSpec) -> dict[str, Node]:
    """Build the staged graph and return its stage nodes by name (see STAGE_NAMES)."""
    spec.check_params(gamma, beta)
    axes = spec.reduce_axes
    source = x
    if spec.grouped_shape is not None:
        source = x.reshape(spec.grouped_shape).named("xg")
    mu = source.mean(axis=axes, keepdims=True).named("mu")
    xmu = (source - mu).named("xmu")
    sq = (xmu**2).named("sq")
    var = sq.mean(axis=axes, keepdims=True).named("var")
    var_eps = (var + _constant(spec.eps, "eps", x)).named("var_eps")
    sqrtvar = var_eps.sqrt().named("sqrtvar")
    ivar = (_constant(1.0, "1", x) / sqrtvar).named("ivar")
    xhat = (xmu * ivar).named("xhat")
    nodes = {"mu": mu, "xmu": xmu, "sq": sq, "var": var, "var_eps": var_eps,
             "sqrtvar": sqrtvar, "ivar": ivar, "xhat": xhat}
    if spec.grouped_shape is not None:
        xhat = xhat.reshape(spec.x_shape).named("xhat_c")
    gammax = (broadcastable(gamma, spec) * xhat).named("gammax")
    out = (gammax + broadcastable(beta, spec)).named("out")
    nodes.update(gammax=gammax, out=out)
    return nodes


def batchnorm_staged(x: Any, gamma: Any, beta: Any, *, axis: Any = None,
                     eps: float = 1e-5) -> Node:
    """Batch norm from primitive ops; returns the `out` node of the staged graph.

    x: (N, D) or (N, C, H, W); gamma, beta: (D,) or (C,). Every stage node (mu, xmu, sq,
    var, var_eps, sqrtvar, ivar, xhat, gammax, out) is named; `tb.stages(out)` finds them.
    """
    x, gamma, beta = as_node(x, "x"), as_node(gamma, "gamma"), as_node(beta, "beta")
    spec = batchnorm_spec(x.shape, axis, eps)
    return staged_nodes(x, gamma, beta, spec)["out"]


# --- fused ----------------------------------------------------------------------------
class NormContext:
    """What the fused op keeps for its backward (arrays only) plus the batch statistics.

    The plain path keeps xhat; the blocked kernel path keeps x itself (a reference, not a
    copy) with the per-feature mean and inv_std, and recomputes what it needs.
    """

    __slots__ = ("xhat", "inv_std", "gamma_b", "mean", "var", "spec", "gamma_shape",
                 "beta_shape", "x", "layout")

    def __init__(self, **fields: Any) -> None:
        self.x = self.layout = None
        for key, value in fields.items():
            setattr(self, key, value)


@functools.lru_cache(maxsize=256)
def _sum_subscripts(ndim: int, axes: tuple[int, ...]) -> str:
    # einsum subscripts for sum(a * b) over `axes` ("abc,abc->b" for axes (0, 2)).
    letters = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    return f"{letters},{letters}->{''.join(c for i, c in enumerate(letters) if i not in axes)}"


class FusedNorm(Op):
    """gamma * (x - mean) / sqrt(var + eps) + beta as one node with the closed-form VJP."""

    name = "norm"
    formula = ("d/d{0} = inv_std*(g - mean(g) - xhat*mean(g*xhat)) with g = upstream*{1}",
               "d/d{1} = sum(upstream*xhat)", "d/d{2} = sum(upstream)")
    domain = ("real", "real", "real")

    @staticmethod
    def forward(x, gamma, beta, *, spec: NormSpec):
        layout = kernels.layout_for(x, spec.reduce_axes) if spec.grouped_shape is None else None
        if layout is not None:
            out, mean, var, inv_std = kernels.forward(
                x, gamma.reshape(-1).astype(np.float64), beta.reshape(-1).astype(np.float64),
                spec.eps, layout)
            return out, NormContext(x=x, layout=layout, mean=mean, var=var, inv_std=inv_std,
                                    gamma_b=gamma.reshape(-1).astype(np.float64), spec=spec,
                                    gamma_shape=gamma.shape, beta_shape=beta.shape)
        # The plain path (small inputs, layer and group norm). Full-size results go through
        # the workspace pool (ops._sub etc.), as the staged graph's do.
        axes = spec.reduce_axes
        count = spec.count
        source = x if spec.grouped_shape is None else x.reshape(spec.grouped_shape)
        mean = np.add.reduce(source, axis=axes, keepdims=True) / count
        xmu = _sub(source, mean)
        var = np.einsum(_sum_subscripts(xmu.ndim, axes), xmu, xmu).reshape(mean.shape) / count
        inv_std = 1.0 / np.sqrt(var + x.dtype.type(spec.eps))
        xhat = _mul(xmu, inv_std, out=xmu).reshape(x.shape)  # xmu is not needed any more
        gamma_b = gamma.reshape(spec.param_bshape)
        out = _mul(gamma_b, xhat)
        out += beta.reshape(spec.param_bshape)
        context = NormContext(xhat=xhat, inv_std=inv_std, gamma_b=gamma_b, mean=mean, var=var,
                              spec=spec, gamma_shape=gamma.shape, beta_shape=beta.shape)
        return out, context

    @staticmethod
    def backward(upstream, ctx: NormContext):
        if ctx.layout is not None:
            dx, dgamma, dbeta = kernels.backward(upstream, ctx.x, ctx.gamma_b, ctx.mean,
                                                 ctx.inv_std, ctx.layout)
            dtype = ctx.x.dtype
            return (dx, dgamma.astype(dtype).reshape(ctx.gamma_shape),
                    dbeta.astype(dtype).reshape(ctx.beta_shape))
        spec = ctx.spec
        # Sum over every axis gamma does not cover to get the per-feature gradients.
        param_sum_axes = tuple(i for i, size in enumerate(spec.param_bshape) if size == 1)
        dbeta = np.add.reduce(upstream, axis=param_sum_axes).reshape(ctx.beta_shape)
        dgamma = product_reduced(upstream, ctx.xhat, spec.param_bshape).reshape(ctx.gamma_shape)
        g = _mul(upstream, ctx.gamma_b)
        xhat = ctx.xhat
        if spec.grouped_shape is not None:
            g = g.reshape(spec.grouped_shape)
            xhat = xhat.reshape(spec.grouped_shape)
        axes = spec.reduce_axes
        count = spec.count
        mean_g = np.add.reduce(g, axis=axes, keepdims=True) / count
        mean_gx = np.einsum(_sum_subscripts(g.ndim, axes), g, xhat).reshape(mean_g.shape) / count
        # dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)), built in one buffer
        dx = _mul(xhat, mean_gx)
        np.subtract(g, dx, out=dx)
        dx -= mean_g
        dx *= ctx.inv_std
        return dx.reshape(spec.x_shape), dgamma, dbeta


class FusedBatchNorm(FusedNorm):
    name = "batchnorm"


def fused_node(op: type[FusedNorm], x: Node, gamma: Node, beta: Node, spec: NormSpec) -> Node:
    """Apply a fused normalization op after checking gamma/beta against `spec`."""
    spec.check_params(gamma, beta)
    return apply(op, (x, gamma, beta), spec=spec)


def batchnorm_fused(x: Any, gamma: Any, beta: Any, *, axis: Any = None,
                    eps: float = 1e-5) -> Node:
    """Batch norm as one `batchnorm` node with the closed-form backward.

    x: (N, D) or (N, C, H, W); gamma, beta: (D,) or (C,); returns a node of x's shape.
    """
    x, gamma, beta = as_node(x, "x"), as_node(gamma, "gamma"), as_node(beta, "beta")
    return fused_node(FusedBatchNorm, x, gamma, beta, batchnorm_spec(x.shape, axis, eps))


# --- the rest of the family: same nine stages, other axes ------------------------------
class FusedLayerNorm(FusedNorm):
    name = "layernorm"


class FusedGroupNorm(FusedNorm):
    name = "groupnorm"


def _check_rank(x_shape: tuple[int, ...], expected: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"x: expected shape {expected}, got {tuple(x_shape)}")


def layernorm_spec(x_shape: tuple[int, ...], eps: Any = 1e-5) -> NormSpec:
    """Layer norm: each sample over all its feature axes; gamma/beta have x.shape[1:]."""
    _check_rank(x_shape, "(N, D) or (N, D1, D2, ...)", len(x_shape) >= 2)
    spec = NormSpec(
        kind="layer norm",
        x_shape=tuple(x_shape),
        reduce_axes=tuple(range(1, len(x_shape))),
        param_shape=tuple(x_shape[1:]),
        param_bshape=(1, *x_shape[1:]),
        eps=check_eps(eps),
    )
    spec.check_nonempty()
    return spec


def spatial_batchnorm_spec(x_shape: tuple[int, ...], eps: Any = 1e-5) -> NormSpec:
    """Spatial batch norm: (N, C, H, W) over (0, 2, 3); gamma/beta of shape (C,)."""
    _check_rank(x_shape, "(N, C, H, W)", len(x_shape) == 4)
    spec = batchnorm_spec(x_shape, (0, 2, 3), eps)
    return NormSpec(**{**spec.__dict__, "kind": "spatial batch norm"})


def groupnorm_spec(x_shape: tuple[int, ...], groups: Any, eps: Any = 1e-5) -> NormSpec:
    """Group norm: (N, C, H, W) seen as (N, G, C/G, H, W), normalized over the last three
    axes; gamma/beta per channel, (C,) or (1, C, 1, 1)."""
    _check_rank(x_shape, "(N, C, H, W)", len(x_shape) == 4)
    n, c, h, w = x_shape
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups <= 0:
        raise ValueError(f"G: expected a positive int, got {groups!r}")
    if c % groups:
        raise ValueError(f"G: expected a divisor of the channel count C={c}, got {groups}")
    spec = NormSpec(
        kind="group norm",
        x_shape=tuple(x_shape),
        reduce_axes=(2, 3, 4),
        param_shape=(c,),
        param_bshape=(1, c, 1, 1),
        eps=check_eps(eps),
        grouped_shape=(n, int(groups), c // int(groups), h, w),
    )
    spec.check_nonempty()
    return spec


NORMS: dict[str, type[FusedNorm]] = {
    "batch": FusedBatchNorm,
    "spatial": FusedBatchNorm,
    "layer": FusedLayerNorm,
    "group": FusedGroupNorm,
}


def norm_spec(kind: str, x_shape: tuple[int, ...], *, eps: Any = 1e-5, groups: Any = None,
              axis: Any = None) -> NormSpec:
    """The spec of normalization `kind` (batch, spatial, layer, group) for input x_shape."""
    if kind == "batch":
        return batchnorm_spec(x_shape, axis, eps)
    if kind == "spatial":
        return spatial_batchnorm_spec(x_shape, eps)
    if kind == "layer":
        return layernorm_spec(x_shape, eps)
    if kind == "group":
        return groupnorm_spec(x_shape, groups, eps)
    raise ValueError(f"norm: expected one of {', '.join(NORMS)}, got {kind!r}")


def norm_staged(kind: str, x: Any, gamma: Any, beta: Any, *, eps: float = 1e-5,
                groups: Any = None, axis: Any = None) -> Node:
    """Normalization `kind` from primitive ops, one named node per stage; returns `out`."""
    x, gamma, beta = as_node(x, "x"), as_node(gamma, "gamma"), as_node(beta, "beta")
    spec = norm_spec(kind, x.shape, eps=eps, groups=groups, axis=axis)
    return staged_nodes(x, gamma, beta, spec)["out"]


def norm_fused(kind: str, x: Any, gamma: Any, beta: Any, *, eps: float = 1e-5,
               groups: Any = None, axis: Any = None) -> Node:
    """Normalization `kind` as one node with the closed-form backward."""
    x, gamma, beta = as_node(x, "x"), as_node(gamma, "gamma"), as_node(beta, "beta")
    spec = norm_spec(kind, x.shape, eps=eps, groups=groups, axis=axis)
    return fused_node(NORMS[kind], x, gamma, beta, spec)


def layernorm_staged(x: Any, gamma: Any, beta: Any, *, eps: float = 1e-5) -> Node:
    """Layer norm, staged. x: (N, D...); gamma, beta: (D...)."""
    return norm_staged("layer", x, gamma, beta, eps=eps)


def layernorm_fused(x: Any, gamma: Any, beta: Any, *, eps: float = 1e-5) -> Node:
    """Layer norm, one `layernorm` node. x: (N, D...); gamma, beta: (D...)."""
    return norm_fused("layer", x, gamma, beta, eps=eps)


def spatial_batchnorm_staged(x: Any, gamma: Any, beta: Any, *, eps: float = 1e-5) -> Node:
    """Spatial batch norm, staged. x: (N, C, H, W); gamma, beta: (C,)."""
    return norm_staged("spatial", x, gamma, beta, eps=eps)


def spatial_batchnorm_fused(x: Any, gamma: Any, beta: Any, *, eps: float = 1e-5) -> Node:
    """Spatial batch norm, one `batchnorm` node. x: (N, C, H, W); gamma, beta: (C,)."""
    return norm_fused("spatial", x, gamma, beta, eps=eps)


def groupnorm_staged(x: Any, gamma: Any, beta: Any, groups: int, *, eps: float = 1e-5) -> Node:
    """Group norm, staged. x: (N, C, H, W); gamma, beta: (C,) or (1, C, 1, 1); C % groups == 0."""
    return norm_staged("group", x, gamma, beta, eps=eps, groups=groups)


def groupnorm_fused(x: Any, gamma: Any, beta: Any, groups: int, *, eps: float = 1e-5) -> Node:
    """Group norm, one `groupnorm` node. Shapes as for groupnorm_staged."""
    return norm_fused("group", x, gamma, beta, eps=eps, groups=groups)

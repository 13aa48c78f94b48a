"""Normalization fused: one node whose backward is the closed-form formula.

With xhat = (x - mean) * ivar, ivar = 1 / sqrt(var + eps), g = upstream * gamma and
the means over the N values of each statistic, the chain rule through the ten stages
collapses to

    dx     = ivar * (g - mean(g) - xhat * mean(g * xhat))
           = ivar / N * (N * g - sum(g) - xhat * sum(g * xhat))
    dgamma = sum(upstream * xhat)      (over the axes gamma does not cover)
    dbeta  = sum(upstream)

`statistics`, `normalize` and `closed_form_backward` below are that math in plain numpy
(the backward also runs on Nodes), the one reference every faster formulation is tested
against. They work in float64 and round once to x's dtype, so a float32 result does not
depend on the batch size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.node import Node, apply, record
from ..core.ops import Op
from ..core.seams import seam
from .spec import NormSpec

__all__ = ["statistics", "normalize", "closed_form_backward", "FusedNorm", "FusedBatchNorm",
           "FusedLayerNorm", "FusedGroupNorm", "NORMS", "fused_node",
           "fused_training_node"]


def statistics(x: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray]:
    """The float64 mean and biased variance of x over the spec's axes, kept as size-1 axes.

    x: x_shape -> mean, var: e.g. (1, D) for (N, D) batch norm, (N, G, 1, 1, 1) for group norm.
    """
    x64 = _float64(spec.grouped(x))
    mean = x64.mean(axis=spec.reduce_axes, keepdims=True)
    xmu = x64 - mean  # two passes: the variance of the centred values has no cancellation
    var = (xmu * xmu).mean(axis=spec.reduce_axes, keepdims=True)
    return mean, var


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              var: np.ndarray, spec: NormSpec) -> np.ndarray:
    """out = gamma * (x - mean) / sqrt(var + eps) + beta, in x's dtype. Shapes: x_shape."""
    xhat = (spec.grouped(x) - mean) / np.sqrt(var + spec.eps)
    out = gamma.reshape(spec.param_bshape) * xhat.reshape(spec.x_shape) \
        + beta.reshape(spec.param_bshape)
    return out.astype(x.dtype, copy=False)


def closed_form_backward(upstream: Any, x: Any, gamma: Any, spec: NormSpec
                         ) -> tuple[Any, Any, Any]:
    """dx (x_shape), dgamma, dbeta (gamma's shape) by the closed form, in x's dtype.

    Written with what numpy arrays and Nodes share, and recomputing the statistics from x:
    on Nodes it builds the backward as a graph of primitives, differentiable again.
    """
    dtype = x.dtype
    x64, upstream64, gamma64 = (_float64(a) for a in (x, upstream, gamma))
    axes = spec.reduce_axes
    xs = spec.grouped(x64)
    xmu = xs - xs.mean(axis=axes, keepdims=True)
    ivar = ((xmu * xmu).mean(axis=axes, keepdims=True) + spec.eps) ** -0.5
    xhat = xmu * ivar
    g = spec.grouped(upstream64 * gamma64.reshape(spec.param_bshape))
    dx = ivar * (g - g.mean(axis=axes, keepdims=True)
                    - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    dgamma = (upstream64 * xhat.reshape(spec.x_shape)).sum(axis=spec.param_sum_axes)
    dbeta = upstream64.sum(axis=spec.param_sum_axes)
    return (_as(dx.reshape(spec.x_shape), dtype), _as(dgamma.reshape(gamma.shape), dtype),
            _as(dbeta.reshape(gamma.shape), dtype))


def _float64(a: Any) -> Any:
    # float32 values are worked in float64 and rounded once at the end (wider ones, such as
    # the extended precision of a numeric reference, are kept).
    return a if a.dtype.itemsize >= 8 else a.astype(np.float64)


def _as(a: Any, dtype: np.dtype) -> Any:
    return a if a.dtype == dtype else a.astype(dtype)


class FusedNorm(Op):
    """gamma * (x - mean) / sqrt(var + eps) + beta as one node with the closed-form VJP.

    The batch statistics are parameters of the node (`mean`, `var`, float64, computed by
    `fused_node` from x): the forward reads them, a module updates its running statistics
    from them, and the fast backward reads them too. The textbook backward recomputes them
    from x instead, so that on Nodes its graph carries their dependence on x.
    """

    name = "norm"
    formula = ("d/d{0} = ivar*(g - mean(g) - xhat*mean(g*xhat)) with g = upstream*{1}",
               "d/d{1} = sum(upstream*xhat)", "d/d{2} = sum(upstream)")
    domain = ("real", "real", "real")

    @staticmethod
    @seam
    def statistics(x, spec):
        """The batch statistics `fused_node` records: the module's `statistics` above.

        Seam: fast/norm.py may stand in (blocked or compiled passes for large inputs).
        """
        return statistics(x, spec)  # the module-level function (a class body is no scope)

    @staticmethod
    @seam
    def forward_with_statistics(x, gamma, beta, *, spec):
        """out, mean, var of a training-mode forward: the batch statistics, then `forward`.

        Seam: fast/norm.py may stand in (passes that normalize while the statistics' data is
        still in cache).
        """
        mean, var = statistics(x, spec)
        return normalize(x, gamma, beta, mean, var, spec), mean, var

    @staticmethod
    @seam
    def forward(x, gamma, beta, *, spec, mean, var):
        """Seam: fast/norm.py may stand in (blocked or compiled passes for large inputs)."""
        return normalize(x, gamma, beta, mean, var, spec)

    @staticmethod
    @seam
    def backward(upstream, x, gamma, beta, out, *, spec, mean, var):
        """Seam: fast/norm.py may stand in (blocked or compiled passes for large inputs)."""
        dx, dgamma, dbeta = closed_form_backward(upstream, x, gamma, spec)
        return dx, dgamma, dbeta.reshape(beta.shape)


class FusedBatchNorm(FusedNorm):
    name = "batchnorm"


class FusedLayerNorm(FusedNorm):
    name = "layernorm"


class FusedGroupNorm(FusedNorm):
    name = "groupnorm"


NORMS: dict[str, type[FusedNorm]] = {
    "batch": FusedBatchNorm,
    "spatial": FusedBatchNorm,
    "layer": FusedLayerNorm,
    "group": FusedGroupNorm,
}


def fused_node(op: type[FusedNorm], x: Node, gamma: Node, beta: Node, spec: NormSpec,
               mean: np.ndarray | None = None, var: np.ndarray | None = None) -> Node:
    """Apply a fused normalization op: check gamma/beta, record the node with the batch
    statistics as its parameters (`mean` and `var` when given, else taken from x)."""
    if mean is None or var is None:
        return fused_training_node(op, x, gamma, beta, spec)[0]
    spec.check_params(gamma, beta)
    return apply(op, (x, gamma, beta), spec=spec, mean=mean, var=var)


def fused_training_node(op: type[FusedNorm], x: Node, gamma: Node, beta: Node, spec: NormSpec
                        ) -> tuple[Node, np.ndarray, np.ndarray]:
    """The training-mode node and its batch mean and variance (float64, kept-axes shaped),
    taken with the output in one call of `op.forward_with_statistics`."""
    spec.check_params(gamma, beta)
    out, mean, var = op.forward_with_statistics(x.data, gamma.data, beta.data, spec=spec)
    return record(op, (x, gamma, beta), out, spec=spec, mean=mean, var=var), mean, var

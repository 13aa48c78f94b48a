"""The public normalization functions: each family member staged and fused."""

from __future__ import annotations

from typing import Any

from ..core.functional import as_operand
from ..core.node import Node
from .fused import NORMS, FusedBatchNorm, fused_node
from .spec import batchnorm_spec, norm_spec
from .staged import staged_nodes

__all__ = ["batchnorm_staged", "batchnorm_fused", "norm_staged", "norm_fused",
           "layernorm_staged", "layernorm_fused", "spatial_batchnorm_staged",
           "spatial_batchnorm_fused", "groupnorm_staged", "groupnorm_fused"]


def _nodes(x: Any, gamma: Any, beta: Any) -> tuple[Node, Node, Node]:
    return as_operand(x, "x"), as_operand(gamma, "gamma"), as_operand(beta, "beta")


def batchnorm_staged(x: Any, gamma: Any, beta: Any, *, axis: Any = None,
                     eps: float = 1e-5) -> Node:
    """Batch norm from primitive ops; returns the `out` node of the staged graph.

    x: (N, D) or (N, C, H, W); gamma, beta: (D,) or (C,). Every stage node (mu, xmu, sq,
    var, var_eps, sqrtvar, ivar, xhat, gammax, out) is named; `tb.stages(out)` finds them.
    """
    x, gamma, beta = _nodes(x, gamma, beta)
    return staged_nodes(x, gamma, beta, batchnorm_spec(x.shape, axis, eps))["out"]


def batchnorm_fused(x: Any, gamma: Any, beta: Any, *, axis: Any = None,
                    eps: float = 1e-5) -> Node:
    """Batch norm as one `batchnorm` node with the closed-form backward.

    x: (N, D) or (N, C, H, W); gamma, beta: (D,) or (C,); returns a node of x's shape.
    """
    x, gamma, beta = _nodes(x, gamma, beta)
    return fused_node(FusedBatchNorm, x, gamma, beta, batchnorm_spec(x.shape, axis, eps))


def norm_staged(kind: str, x: Any, gamma: Any, beta: Any, *, eps: float = 1e-5,
                groups: Any = None, axis: Any = None) -> Node:
    """Normalization `kind` (batch, spatial, layer, group) from primitive ops; returns `out`."""
    x, gamma, beta = _nodes(x, gamma, beta)
    spec = norm_spec(kind, x.shape, eps=eps, groups=groups, axis=axis)
    return staged_nodes(x, gamma, beta, spec)["out"]


def norm_fused(kind: str, x: Any, gamma: Any, beta: Any, *, eps: float = 1e-5,
               groups: Any = None, axis: Any = None) -> Node:
    """Normalization `kind` as one node with the closed-form backward."""
    x, gamma, beta = _nodes(x, gamma, beta)
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

"""What the staged graph needs besides its ten stages: its inputs in the right shapes and its
two named constants."""

from __future__ import annotations

import functools

import numpy as np

from ..core.node import Constant, Node
from .spec import NormSpec

__all__ = ["StagedInputs", "ungrouped", "broadcastable", "named_constant"]


class StagedInputs:
    """x as the statistics see it, gamma and beta as they broadcast, eps and 1 as constants."""

    def __init__(self, x: Node, gamma: Node, beta: Node, spec: NormSpec) -> None:
        spec.check_params(gamma, beta)
        self.source = x if spec.grouped_shape is None else x.reshape(spec.grouped_shape).named("xg")
        self.gamma = broadcastable(gamma, spec)
        self.beta = broadcastable(beta, spec)
        self.eps = named_constant(spec.eps, "eps", x.dtype)
        self.one = named_constant(1.0, "1", x.dtype)



def ungrouped(xhat: Node, spec: NormSpec) -> Node:
    """Group norm's xhat back in x's shape (a reshape node); other norms' xhat as it is."""
    return xhat if spec.grouped_shape is None else xhat.reshape(spec.x_shape).named("xhat_c")


def broadcastable(param: Node, spec: NormSpec) -> Node:
    """gamma or beta in a shape that broadcasts against x.

    numpy aligns trailing axes, so (D,) already broadcasts against (N, D); (C,) against
    (N, C, H, W) needs a reshape node to (1, C, 1, 1).
    """
    lead = len(spec.param_bshape) - param.ndim
    if spec.param_bshape[lead:] == param.shape and all(s == 1 for s in spec.param_bshape[:lead]):
        return param
    return param.reshape(spec.param_bshape).named(f"{param.name or 'param'}_b")


@functools.lru_cache(maxsize=64)
def named_constant(value: float, name: str, dtype: np.dtype) -> Constant:
    # Named so that `explain` and the viewer say "var + eps" rather than "var + 1e-05";
    # Constants are immutable, so one per value serves every graph.
    return Constant(np.asarray(value, dtype=dtype), name=name)

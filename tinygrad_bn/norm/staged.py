"""Normalization staged: the ten stages (the diagram's nine steps with step 5 split), one
named node each.

The backward pass of this graph is the engine's ordinary one: every stage's gradient is
its `.grad` after `out.backward(dout)`, which is what `explain` and the viewer show.
"""

from __future__ import annotations

from ..core.node import Node
from .prepare import StagedInputs, ungrouped
from .spec import NormSpec

__all__ = ["STAGE_NAMES", "staged_nodes"]

# The staged graph's node names, in forward order.
STAGE_NAMES = ("mu", "xmu", "sq", "var", "var_eps", "sqrtvar", "ivar", "xhat", "gammax", "out")


def staged_nodes(x: Node, gamma: Node, beta: Node, spec: NormSpec) -> dict[str, Node]:
    """Build the staged graph; returns its stage nodes by name (see STAGE_NAMES)."""
    inputs = StagedInputs(x, gamma, beta, spec)
    axes = spec.reduce_axes
    mu = inputs.source.mean(axis=axes, keepdims=True).named("mu")        # 1  mean
    xmu = (inputs.source - mu).named("xmu")                              # 2  x - mu
    sq = (xmu**2).named("sq")                                            # 3  xmu^2
    var = sq.mean(axis=axes, keepdims=True).named("var")                 # 4  biased variance
    var_eps = (var + inputs.eps).named("var_eps")                        # 5a var + eps
    sqrtvar = var_eps.sqrt().named("sqrtvar")                            # 5b sqrt
    ivar = (inputs.one / sqrtvar).named("ivar")                          # 6  1 / sqrtvar
    xhat = (xmu * ivar).named("xhat")                                    # 7  normalized x
    gammax = (inputs.gamma * ungrouped(xhat, spec)).named("gammax")      # 8  scale
    out = (gammax + inputs.beta).named("out")                            # 9  shift
    return {"mu": mu, "xmu": xmu, "sq": sq, "var": var, "var_eps": var_eps, "sqrtvar": sqrtvar,
            "ivar": ivar, "xhat": xhat, "gammax": gammax, "out": out}

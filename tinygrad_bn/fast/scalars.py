"""Graphs of scalars: one node's backward step without the array machinery.

In a graph of numpy scalars (micrograd's world) the VJP's `unbroadcast`, the argument
list built for it and the keyword parameters cost more than the arithmetic. The core's
backward loop asks `vjp(node, upstream)` what each node sends back to its parents, a seam;
for a node whose value and gradient are numpy scalars, and whose op has a rule below, the
rule answers instead. Each rule is the textbook VJP with nothing to broadcast; the
equivalence tests check every rule against the op's own VJP.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core import node as core_node
from ..core.node import Node
from ..core.ops import Add, Div, Exp, Identity, Log, Mul, Neg, PowConst, Sqrt, Sub, Tanh
from .registry import fast_variant

__all__ = ["SCALAR_VJPS", "scalar_vjp"]


def _pow_const(g: Any, n: Node) -> tuple[Any]:
    p = n.params["p"]
    if p == 0:  # x^0 is the constant 1: no gradient (as the textbook rule)
        return (type(g)(0.0),)
    return (g * (p * n.parents[0].data ** (p - 1)),)


# op -> (upstream, node) -> one gradient per parent, for numpy-scalar values.
SCALAR_VJPS = {
    Add: lambda g, n: (g, g),
    Sub: lambda g, n: (g, -g),
    Mul: lambda g, n: (g * n.parents[1].data, g * n.parents[0].data),
    Div: lambda g, n: (g / n.parents[1].data, -g * n.data / n.parents[1].data),
    Neg: lambda g, n: (-g,),
    Identity: lambda g, n: (g,),
    Sqrt: lambda g, n: (g / (2 * n.data),),
    Exp: lambda g, n: (g * n.data,),
    Log: lambda g, n: (g / n.parents[0].data,),
    Tanh: lambda g, n: (g * (1 - n.data * n.data),),
    PowConst: _pow_const,
}


textbook_vjp = core_node.vjp.seam.textbook


# No condition: the seam asks none per node, so the loop calls this function directly.
@fast_variant(core_node, "vjp")
def scalar_vjp(node: Node, upstream: Any, create_graph: bool = False) -> tuple[Any, ...]:
    """The scalar rule of the node's op where its value and gradient are numpy scalars (first
    order); elsewhere the textbook step itself."""
    rule = SCALAR_VJPS.get(node.op_def) if type(upstream) is not np.ndarray else None
    if rule is None or create_graph or type(node.data) is np.ndarray:
        return textbook_vjp(node, upstream, create_graph)
    return rule(upstream, node)

"""Graphs of scalars: one node's backward step without the array machinery.

In a graph of numpy scalars (micrograd's world) the VJP's `unbroadcast`, the argument
list built for it and the keyword parameters cost more than the arithmetic. The core's
backward loop asks `vjp(node, upstream)` what each node sends back to its parents, a seam;
for a node whose value and gradient are numpy scalars, and whose op has a rule below, the
rule answers instead (`steps.py` holds the step that picks it). Each rule is the textbook
VJP with nothing to broadcast; the equivalence tests check every rule against the op's own
VJP.
"""

from __future__ import annotations

from typing import Any

from ..core.node import Node
from ..core.ops import Add, Div, Exp, Identity, Log, Mul, Neg, PowConst, Sqrt, Sub, Tanh

__all__ = ["SCALAR_VJPS"]


def _pow_const(g: Any, n: Node) -> tuple[Any]:
    p = n.params["p"]
    if p == 0:  # x^0 is the constant 1: no gradient (as the textbook rule)
        return (type(g)(0.0),)
    (base,) = n.parents
    return (g * (p * base.data ** (p - 1)),)


def _mul(g: Any, n: Node) -> tuple[Any, Any]:
    a, b = n.parents
    return g * b.data, g * a.data


def _div(g: Any, n: Node) -> tuple[Any, Any]:
    y = n.parents[1].data
    return g / y, -g * n.data / y


# op -> (upstream, node) -> one gradient per parent, for numpy-scalar values.
SCALAR_VJPS = {
    Add: lambda g, n: (g, g),
    Sub: lambda g, n: (g, -g),
    Mul: _mul,
    Div: _div,
    Neg: lambda g, n: (-g,),
    Identity: lambda g, n: (g,),
    Sqrt: lambda g, n: (g / (2 * n.data),),
    Exp: lambda g, n: (g * n.data,),
    Log: lambda g, n: (g / n.parents[0].data,),
    Tanh: lambda g, n: (g * (1 - n.data * n.data),),
    PowConst: _pow_const,
}

"""Graphs of scalars: the backward pass without the array machinery.

In a graph of numpy scalars (micrograd's world) every VJP's `unbroadcast`, the argument
list built for it and the keyword parameters cost more than the arithmetic. This variant
of the core's backward loop (`core.node._totals`) is the same loop; only where the
gradient arriving is a numpy scalar and the op has a rule below does it call that rule
instead of the op's VJP. Each rule is the textbook VJP with nothing to broadcast; the
equivalence tests check every rule against the op's own VJP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..core import node as core_node
from ..core.node import _FREED, Node
from ..core.ops import Add, Div, Exp, Identity, Log, Mul, Neg, PowConst, Sqrt, Sub, Tanh
from .registry import fast_variant

__all__ = ["SCALAR_VJPS"]


def _data(node: Node, index: int) -> Any:
    return node.parents[index].data


def _pow_const(g: Any, n: Node) -> tuple[Any]:
    p = n.params["p"]
    if p == 0:  # x^0 is the constant 1: no gradient (as the textbook rule)
        return (type(g)(0.0),)
    return (g * (p * _data(n, 0) ** (p - 1)),)


# op -> (upstream, node) -> one gradient per parent, for numpy-scalar values.
SCALAR_VJPS = {
    Add: lambda g, n: (g, g),
    Sub: lambda g, n: (g, -g),
    Mul: lambda g, n: (g * _data(n, 1), g * _data(n, 0)),
    Div: lambda g, n: (g / _data(n, 1), -g * n.data / _data(n, 1)),
    Neg: lambda g, n: (-g,),
    Identity: lambda g, n: (g,),
    Sqrt: lambda g, n: (g / (2 * n.data),),
    Exp: lambda g, n: (g * n.data,),
    Log: lambda g, n: (g / _data(n, 0),),
    Tanh: lambda g, n: (g * (1 - n.data * n.data),),
    PowConst: _pow_const,
}


def _first_order(root: Node, seed: Any, *, create_graph: bool = False,
                 free_graph: bool = False) -> bool:
    return not create_graph


@fast_variant(core_node, "_totals", when=_first_order, arrays_only=False)
def scalar_totals(root: Node, seed: Any, *, create_graph: bool = False,
                  free_graph: bool = False) -> Iterator[tuple[Node, Any]]:
    order = root._collect()
    order.sort(key=core_node._creation_number)
    pending: dict[Node, Any] = {root: seed}
    rules = SCALAR_VJPS
    while order:
        node = order.pop()
        total = pending.pop(node, None)
        if total is None:
            continue
        yield node, total
        op = node._op
        if op is None:
            continue
        rule = rules.get(op) if type(total) is not np.ndarray else None
        if rule is not None and type(node.data) is not np.ndarray:
            parent_grads = rule(total, node)
        else:
            inputs = [parent.data for parent in node.parents]
            parent_grads = op.backward(total, *inputs, node.data, **node._params)
        for parent, parent_grad in zip(node.parents, parent_grads):
            if parent_grad is not None and parent.requires_grad:
                previous = pending.get(parent)
                pending[parent] = parent_grad if previous is None else previous + parent_grad
        if free_graph:
            node.parents, node._params = (), _FREED

"""One node's step of the backward pass, without the work the core's loop throws away.

The core's loop asks `vjp(node, upstream)` what a node sends back to each parent (a seam)
and keeps only what reaches a parent that requires a gradient. The textbook step runs the
op's VJP, which computes a gradient for every input: in the staged batch norm that is the
sum of 1/sqrtvar's gradient to the constant 1 and of var + eps's to eps, computed and
dropped on every pass. The step here, for first-order passes:

- graphs of numpy scalars: the scalar rules of `scalars.py`;
- arrays: for the ops below, the textbook VJP's formula for each parent that requires a
  gradient and None for the others, with the op's inputs unpacked by position, and a
  reduction's gradient spread back as a strided view (`spread`, what `np.broadcast_to`
  gives, without its argument handling);
- everything else (create_graph, ops without a rule here): the textbook step itself.

The equivalence tests run each rule against the textbook VJP on broadcast and float32
inputs; the loop, the order and what a `.grad` keeps stay the core's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core import node as core_node
from ..core.node import Node
from ..core.ops import Add, Div, Mean, Mul, PowConst, Sub, Sum, unbroadcast
from .ops import mul_backward_reduced, product_sum, reduces_products
from .registry import fast_variant
from .scalars import SCALAR_VJPS

__all__ = ["ARRAY_STEPS", "node_step", "spread"]


def spread(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`np.broadcast_to(small, shape)`: a read-only view of `small` with zero strides on the
    axes it is stretched along. small: the same number of axes as `shape`, each of size 1 or
    the target's; any other input goes to numpy's own function."""
    if type(small) is not np.ndarray or small.ndim != len(shape) \
            or not small.flags.c_contiguous:
        return np.broadcast_to(small, shape)
    strides = []
    for size, target, stride in zip(small.shape, shape, small.strides):
        if size == target:
            strides.append(stride)
        elif size == 1:
            strides.append(0)
        else:
            return np.broadcast_to(small, shape)  # raises numpy's own error
    view = np.ndarray(shape, small.dtype, small, 0, tuple(strides))
    view.flags.writeable = False
    return view


def _add(g: np.ndarray, node: Node) -> tuple[Any, Any]:
    a, b = node.parents
    return (unbroadcast(g, a.data.shape) if a.requires_grad else None,
            unbroadcast(g, b.data.shape) if b.requires_grad else None)


def _sub(g: np.ndarray, node: Node) -> tuple[Any, Any]:
    a, b = node.parents
    return (unbroadcast(g, a.data.shape) if a.requires_grad else None,
            -unbroadcast(g, b.data.shape) if b.requires_grad else None)


def _mul(g: np.ndarray, node: Node) -> tuple[Any, Any]:
    a, b = node.parents
    x, y = a.data, b.data
    if reduces_products(g, x, y, node.data):  # what the seam of Mul's VJP would run
        if a.requires_grad and b.requires_grad:
            return mul_backward_reduced(g, x, y, node.data)
        return (product_sum(g, y, np.shape(x)) if a.requires_grad else None,
                product_sum(g, x, np.shape(y)) if b.requires_grad else None)
    return (unbroadcast(g * y, np.shape(x)) if a.requires_grad else None,
            unbroadcast(g * x, np.shape(y)) if b.requires_grad else None)


def _div(g: np.ndarray, node: Node) -> tuple[Any, Any]:
    a, b = node.parents
    y = b.data
    return (unbroadcast(g / y, np.shape(a.data)) if a.requires_grad else None,
            unbroadcast(-g * node.data / y, np.shape(y)) if b.requires_grad else None)


def _pow_const(g: np.ndarray, node: Node) -> tuple[Any]:
    (base,) = node.parents
    if not base.requires_grad:
        return (None,)
    return PowConst.backward(g, base.data, node.data, p=node.params["p"])


def _reduction(g: Any, node: Node, count_divides: bool) -> tuple[Any]:
    (a,) = node.parents
    if not a.requires_grad:
        return (None,)
    params = node.params
    axis, shape = params["axis"], a.data.shape
    if count_divides:
        g = g / math.prod(shape[i] for i in axis)
    if not params["keepdims"]:
        g = g.reshape(tuple(1 if i in axis else size for i, size in enumerate(shape)))
    return (spread(g, shape),)


# op -> (upstream array, node) -> one gradient per parent (None: the parent needs none).
ARRAY_STEPS = {
    Add: _add,
    Sub: _sub,
    Mul: _mul,
    Div: _div,
    PowConst: _pow_const,
    Sum: lambda g, node: _reduction(g, node, count_divides=False),
    Mean: lambda g, node: _reduction(g, node, count_divides=True),
}

textbook_vjp = core_node.vjp.seam.textbook


# No condition: the seam asks none per node, so the loop calls this function directly.
@fast_variant(core_node, "vjp")
def node_step(node: Node, upstream: Any, create_graph: bool = False) -> tuple[Any, ...]:
    """What `node` sends back to each parent: the op's scalar rule for numpy-scalar values,
    its array rule for arrays (None for a parent that requires no gradient), else the
    textbook step."""
    if not create_graph:
        if type(upstream) is np.ndarray:
            rule = ARRAY_STEPS.get(node.op_def)
            if rule is not None:
                return rule(upstream, node)
        elif type(node.data) is not np.ndarray:
            rule = SCALAR_VJPS.get(node.op_def)
            if rule is not None:
                return rule(upstream, node)
    return textbook_vjp(node, upstream, create_graph)

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

import functools
import math
from typing import Any

import numpy as np

from ..core import node as core_node
from ..core.node import Node
from ..core.ops import Add, Div, Mean, Mul, PowConst, Sqrt, Sub, Sum
from .ops import mul_backward_reduced, product_sum, reduces_products, square_backward, squares_large
from .registry import fast_variant
from .scalars import SCALAR_VJPS

__all__ = ["ARRAY_STEPS", "node_step", "spread", "reduce_to"]


def spread(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`np.broadcast_to(small, shape)`: a read-only view of `small` with zero strides on the
    axes it is stretched along. small: the same number of axes as `shape`, each of size 1 or
    the target's; any other input goes to numpy's own function."""
    if type(small) is not np.ndarray or not small.flags.c_contiguous:
        return np.broadcast_to(small, shape)
    key = (small.shape, small.strides, shape)
    strides = _SPREAD_STRIDES.get(key)
    if strides is None:
        if small.ndim != len(shape) or any(size not in (1, target)
                                           for size, target in zip(small.shape, shape)):
            return np.broadcast_to(small, shape)  # numpy's own result or error
        strides = tuple(0 if size != target else stride
                        for size, target, stride in zip(small.shape, shape, small.strides))
        _remember(_SPREAD_STRIDES, key, strides)
    view = np.ndarray(shape, small.dtype, small, 0, strides)
    view.setflags(write=False)
    return view


def _remember(memo: dict, key: Any, value: Any) -> None:
    # A bounded memo of shape arithmetic: any number of shapes works, the common few are fast.
    if len(memo) >= 1024:
        memo.clear()
    memo[key] = value


_SPREAD_STRIDES: dict[tuple[Any, ...], tuple[int, ...]] = {}
_SUM_PLANS: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], ...]] = {}


def reduce_to(grad: np.ndarray, shape: tuple[int, ...]) -> Any:
    """`unbroadcast(grad, shape)` for an array: the same sums (the added axes, then the
    stretched ones kept), with the axes worked out once per pair of shapes and numpy's
    reduction called directly."""
    if grad.shape == shape:
        return grad
    key = (grad.shape, shape)
    plan = _SUM_PLANS.get(key)
    if plan is None:
        added = grad.ndim - len(shape)
        stretched = tuple(i for i, size in enumerate(shape)
                          if size == 1 and grad.shape[added + i] != 1)
        plan = (tuple(range(added)), stretched)
        _remember(_SUM_PLANS, key, plan)
    added, stretched = plan
    if added:
        grad = np.add.reduce(grad, axis=added)
    if stretched:
        grad = np.add.reduce(grad, axis=stretched, keepdims=True)
    return grad


def _add(g: np.ndarray, node: Node) -> tuple[Any, Any]:
    a, b = node.parents
    return (reduce_to(g, a.data.shape) if a.requires_grad else None,
            reduce_to(g, b.data.shape) if b.requires_grad else None)


def _sub(g: np.ndarray, node: Node) -> tuple[Any, Any]:
    a, b = node.parents
    return (reduce_to(g, a.data.shape) if a.requires_grad else None,
            -reduce_to(g, b.data.shape) if b.requires_grad else None)


def _mul(g: np.ndarray, node: Node) -> tuple[Any, Any]:
    a, b = node.parents
    x, y = a.data, b.data
    if reduces_products(g, x, y, node.data):  # what the seam of Mul's VJP would run
        if a.requires_grad and b.requires_grad:
            return mul_backward_reduced(g, x, y, node.data)
        return (product_sum(g, y, x.shape) if a.requires_grad else None,
                product_sum(g, x, y.shape) if b.requires_grad else None)
    return (reduce_to(g * y, x.shape) if a.requires_grad else None,
            reduce_to(g * x, y.shape) if b.requires_grad else None)


def _div(g: np.ndarray, node: Node) -> tuple[Any, Any]:
    a, b = node.parents
    y = b.data
    return (reduce_to(g / y, a.data.shape) if a.requires_grad else None,
            reduce_to(-g * node.data / y, y.shape) if b.requires_grad else None)


def _pow_const(g: np.ndarray, node: Node) -> tuple[Any]:
    (base,) = node.parents
    if not base.requires_grad:
        return (None,)
    x, p = base.data, node.params["p"]
    if squares_large(g, x, node.data, p=p):  # what the seam of PowConst's VJP would run
        return square_backward(g, x, node.data, p=p)
    return PowConst.backward(g, x, node.data, p=p)


def _sqrt(g: np.ndarray, node: Node) -> tuple[Any]:
    return (g / (2 * node.data) if node.parents[0].requires_grad else None,)


def _reduction(g: Any, node: Node, count_divides: bool) -> tuple[Any]:
    (a,) = node.parents
    if not a.requires_grad:
        return (None,)
    params = node.params
    shape = a.data.shape
    key = (shape, params["axis"])
    plan = _REDUCTION_PLANS.get(key)
    if plan is None:  # how many values each output averages, and its shape with keepdims
        axis = params["axis"]
        plan = (math.prod(shape[i] for i in axis),
                tuple(1 if i in axis else size for i, size in enumerate(shape)))
        _remember(_REDUCTION_PLANS, key, plan)
    count, kept_shape = plan
    if count_divides:
        g = g / count
    if not params["keepdims"]:
        g = g.reshape(kept_shape)
    return (spread(g, shape),)


_REDUCTION_PLANS: dict[tuple[Any, ...], tuple[int, tuple[int, ...]]] = {}


# op -> (upstream array, node) -> one gradient per parent (None: the parent needs none).
ARRAY_STEPS = {
    Add: _add,
    Sub: _sub,
    Mul: _mul,
    Div: _div,
    PowConst: _pow_const,
    Sqrt: _sqrt,
    Sum: functools.partial(_reduction, count_divides=False),
    Mean: functools.partial(_reduction, count_divides=True),
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

"""The graph: `Node`, the backward pass and the `no_grad` switch.

A Node holds a numpy array, its gradient, the op that produced it and that op's
parents. Ops live in `ops.py`; this file only knows how to record them and how to
walk the graph backwards. Backward never recurses, so graphs of any depth work, and
no op closure captures its own output node, so the graph holds no reference cycles
and is freed by reference counting alone.
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .ops import Op

__all__ = ["Node", "no_grad", "enable_grad", "is_grad_enabled", "graph_nodes", "stages"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class _GradMode(threading.local):
    # Thread-local, as in PyTorch: a no_grad block in one thread leaves others recording.
    enabled = True


_grad_mode = _GradMode()
# Creation numbers: a node's parents always have smaller ones (see Node.backward).
_creation_order = itertools.count()
_creation_number = operator.attrgetter("_seq")
_FREED = object()  # marks an op node whose saved arrays backward(free_graph=True) dropped


def is_grad_enabled() -> bool:
    """True unless inside a `no_grad()` block (of this thread)."""
    return _grad_mode.enabled


@contextmanager
def no_grad() -> Iterator[None]:
    """Context in which ops record no graph: results are constant leaves."""
    previous = _grad_mode.enabled
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


@contextmanager
def enable_grad() -> Iterator[None]:
    """Context that re-enables graph recording inside a `no_grad()` block."""
    previous = _grad_mode.enabled
    _grad_mode.enabled = True
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def as_float_array(value: Any, argname: str = "data") -> np.ndarray:
    """Convert `value` to a float32/float64 array; Python and integer numbers become float64.

    Raises TypeError naming `argname` for booleans, complex, strings, objects and other
    float widths, so that a wrong dtype is caught where it enters rather than deep in an op.
    """
    array = np.asarray(value)
    dtype = array.dtype
    if dtype in _FLOAT_DTYPES:
        return array
    if dtype.kind in "iu":
        return array.astype(np.float64)
    raise TypeError(
        f"{argname}: expected real numbers (float32, float64 or integers), "
        f"got an array of dtype {dtype}"
    )


class Node:
    """A value in the graph: `data` (an ndarray; a numpy scalar when 0-d), `grad`, the `op`
    that made it, its `parents`.

    `grad` stays None until a backward pass reaches the node; afterwards it is an array of
    `data`'s shape and dtype. Gradients *accumulate* across `backward()` calls, as in
    PyTorch: call `zero_grad()` between passes when you want fresh ones.
    """

    __slots__ = ("data", "grad", "name", "requires_grad", "parents", "_op", "_saved", "_seq",
                 "__weakref__")

    def __init__(self, data: Any, name: str | None = None, requires_grad: bool = True) -> None:
        if type(data) is float:
            self.data = np.float64(data)
        else:
            data = as_float_array(data)
            # 0-d values are kept as numpy scalars (np.float64 / np.float32), which is what
            # numpy's own 0-d arithmetic returns and what makes scalar graphs cheap.
            self.data = data[()] if data.ndim == 0 else data
        self.grad: np.ndarray | None = None
        self.name = name
        self.requires_grad = bool(requires_grad)
        self.parents: tuple[Node, ...] = ()
        self._op: Op | None = None
        self._saved: Any = None
        self._seq = next(_creation_order)

    @classmethod
    def _result(
        cls, data: np.ndarray, op: Op, parents: tuple[Node, ...], saved: Any, requires_grad: bool
    ) -> Node:
        # Fast path for op outputs: data is already a checked float array.
        node = cls.__new__(cls)
        node.data = data
        node.grad = None
        node.name = None
        node.requires_grad = requires_grad
        node.parents = parents
        node._op = op
        node._saved = saved
        node._seq = next(_creation_order)
        return node

    # --- introspection -------------------------------------------------------------
    @property
    def op(self) -> str | None:
        """Name of the op that produced this node (e.g. "sub", "batchnorm"); None for a leaf."""
        return None if self._op is None else self._op.name

    @property
    def op_def(self) -> Op | None:
        """The op definition itself (forward, VJP and the local-derivative formula)."""
        return self._op

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def is_leaf(self) -> bool:
        return self._op is None

    @property
    def freed(self) -> bool:
        """True once backward(free_graph=True) has dropped this op node's saved arrays."""
        return self._saved is _FREED

    def item(self) -> float:
        """The value of a size-1 node as a Python float."""
        return float(self.data.item())

    def named(self, name: str) -> Node:
        """Set `name` (a stage label shown by `explain` and the viewer) and return self."""
        self.name = name
        return self

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        op = f", op={self.op!r}" if self._op is not None else ""
        if self.data.size == 1:
            value = f"{self.data.item():.6g}"
        else:
            value = f"shape={self.data.shape}"
        return f"Node({label}{value}, dtype={self.data.dtype}{op})"

    # --- backward ------------------------------------------------------------------
    def backward(self, grad: Any = None, *, free_graph: bool = False) -> None:
        """Backpropagate from this node, adding d(self)/d(node) * grad into every `node.grad`.

        grad: upstream gradient of `self`'s shape. It may be omitted only for a size-1 node
        (it is then 1). Gradients accumulate across calls; use `zero_grad()` to clear them.
        Every node of the graph keeps its gradient; this node's own `.grad` is a read-only
        view of `grad` (no copy). free_graph=True works as PyTorch does instead: each node's
        saved arrays, parents and gradient are dropped as soon as the pass is done with it,
        so intermediates are freed during the pass; afterwards only leaves (and this node)
        have gradients and the graph cannot be backpropagated again.
        """
        seed = self._check_upstream(grad)
        if not self.requires_grad:
            raise ValueError(
                "backward: this node does not require grad (it was built from constants or "
                "inside no_grad()), so there is nothing to differentiate"
            )
        # Collect the graph first: a freed part is an error before any gradient changes.
        order = _reachable(self, requires_grad_only=True)
        if any(node._saved is _FREED for node in order):
            raise ValueError(
                "backward: this graph was already freed by backward(free_graph=True); "
                "build it again to backpropagate a second time"
            )
        # A node is always created after its parents, so visiting the graph newest first
        # reaches each node after every consumer has added its part: a topological order
        # from one sort of creation numbers, with no recursion and no ordered walk.
        order.sort(key=_creation_number, reverse=True)
        if self.grad is not None:
            self.grad = self.grad + seed
        elif isinstance(seed, np.ndarray):
            view = seed.view()
            view.flags.writeable = False
            self.grad = view
        else:
            self.grad = seed
        # Buffers already handed out as a `.grad` in this pass (by the id of the array that
        # owns the memory), and whether writeable: an op may pass one array to several
        # parents, and a user must be able to edit one gradient without changing another.
        owners: dict[int, bool] = {id(_owner(seed)): False}
        pending: dict[Node, np.ndarray] = {self: seed}
        add = _ops._add  # np.add, through the workspace pool when large
        for index, node in enumerate(order):
            if free_graph:
                order[index] = None  # this list must not keep a freed node's arrays alive
            upstream = pending.pop(node, None)
            if upstream is None:  # no gradient flows here (e.g. only through constants)
                continue
            if node is not self and (not free_graph or node._op is None):
                kind = type(upstream)
                if kind is not np.ndarray and kind is type(node.data) and node.grad is None:
                    node.grad = upstream  # a numpy scalar of the node's own type: store as is
                else:
                    node._store_grad(upstream, owners)
            op = node._op
            if op is None:
                continue
            parent_grads = op.backward(upstream, node._saved)
            for parent, parent_grad in zip(node.parents, parent_grads):
                if parent_grad is None or not parent.requires_grad:
                    continue
                previous = pending.get(parent)
                # A fresh sum, never `+=`: the arrays may be shared.
                pending[parent] = parent_grad if previous is None else add(previous, parent_grad)
            if free_graph:
                node._saved = _FREED
                node.parents = ()

    def _check_upstream(self, grad: Any) -> np.ndarray:
        data = self.data
        if grad is None:
            if data.size != 1:
                raise ValueError(
                    f"backward: grad can be omitted only for a node with one element; this node "
                    f"has shape {data.shape}, so pass an upstream gradient of that shape"
                )
            return data.dtype.type(1) if data.ndim == 0 else np.ones_like(data)
        if isinstance(grad, Node):
            grad = grad.data
        upstream = as_float_array(grad, "grad")
        if upstream.shape != data.shape:
            raise ValueError(
                f"backward: grad must have the node's shape {data.shape}, "
                f"got shape {upstream.shape}"
            )
        upstream = upstream.astype(data.dtype, copy=False)
        return upstream[()] if upstream.ndim == 0 else upstream

    def _store_grad(self, upstream: Any, owners: dict[int, bool]) -> None:
        data = self.data
        if upstream.dtype != data.dtype:
            upstream = upstream.astype(data.dtype)
        if data.ndim == 0:
            # Numpy scalars are immutable: nothing to alias, nothing to copy.
            if type(upstream) is np.ndarray:
                upstream = upstream.reshape(())[()]
            self.grad = upstream if self.grad is None else self.grad + upstream
            return
        if upstream.shape != data.shape:  # a gradient broadcast into a larger slot
            upstream = np.broadcast_to(upstream, data.shape)
        if self.grad is not None:
            self.grad = self.grad + upstream
            return
        owner = id(_owner(upstream))
        handed_out_writeable = owners.get(owner)
        if self._op is None:
            # A leaf's gradient is the user's to edit (an optimizer may scale it in place):
            # it must be a writeable array that no other gradient shares.
            if handed_out_writeable is not None or not upstream.flags.writeable:
                upstream = upstream.copy()
                owner = id(upstream)
            owners[owner] = True
            self.grad = upstream
            return
        # An intermediate's gradient is for reading: a read-only view is enough, and saves
        # a copy, unless its buffer is some leaf's editable gradient.
        if handed_out_writeable:
            upstream = upstream.copy()
            owner = id(upstream)
        view = upstream.view()
        view.flags.writeable = False
        owners.setdefault(owner, False)
        self.grad = view

    def zero_grad(self) -> None:
        """Clear `grad` on this node and on every node of the graph that produced it."""
        for node in graph_nodes(self):
            node.grad = None

    # --- operators (the ops themselves live in ops.py) ------------------------------
    def __add__(self, other: Any) -> Node:
        return _ops.add(self, other)

    def __radd__(self, other: Any) -> Node:
        return _ops.add(other, self)

    def __sub__(self, other: Any) -> Node:
        return _ops.sub(self, other)

    def __rsub__(self, other: Any) -> Node:
        return _ops.sub(other, self)

    def __mul__(self, other: Any) -> Node:
        return _ops.mul(self, other)

    def __rmul__(self, other: Any) -> Node:
        return _ops.mul(other, self)

    def __truediv__(self, other: Any) -> Node:
        return _ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Node:
        return _ops.div(other, self)

    def __pow__(self, other: Any) -> Node:
        return _ops.pow(self, other)

    def __rpow__(self, other: Any) -> Node:
        return _ops.pow(other, self)

    def __matmul__(self, other: Any) -> Node:
        return _ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Node:
        return _ops.matmul(other, self)

    def __neg__(self) -> Node:
        return _ops.neg(self)

    # numpy must defer to the reflected operators above instead of broadcasting a Node
    # into an object array (`np.ones(3) * node` should give a Node).
    __array_ufunc__ = None

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Node:
        return _ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Node:
        return _ops.mean(self, axis=axis, keepdims=keepdims)

    def sqrt(self) -> Node:
        return _ops.sqrt(self)

    def exp(self) -> Node:
        return _ops.exp(self)

    def log(self) -> Node:
        return _ops.log(self)

    def relu(self) -> Node:
        return _ops.relu(self)

    def tanh(self) -> Node:
        return _ops.tanh(self)

    def reshape(self, *shape: Any) -> Node:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.reshape(self, shape)

    def transpose(self, *axes: Any) -> Node:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops.transpose(self, axes or None)

    @property
    def T(self) -> Node:  # noqa: N802 - numpy's name
        return _ops.transpose(self, None)


def _owner(array: np.ndarray) -> object:
    # numpy points a view's `base` at the array that owns the memory (or another view).
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


def graph_nodes(root: Node) -> list[Node]:
    """Every node `root` depends on, parents before children (root last), in creation order."""
    order = _reachable(root, requires_grad_only=False)
    order.sort(key=_creation_number)
    return order


def _reachable(root: Node, requires_grad_only: bool) -> list[Node]:
    # Breadth-first and iterative (no recursion limit); the list grows while it is walked.
    order = [root]
    seen = {root}
    for node in order:
        for parent in node.parents:
            if parent not in seen and (parent.requires_grad or not requires_grad_only):
                seen.add(parent)
                order.append(parent)
    return order


def stages(root: Node) -> dict[str, Node]:
    """The named nodes of `root`'s graph by name (e.g. {"mu": ..., "xmu": ..., "out": ...})."""
    return {node.name: node for node in graph_nodes(root) if node.name is not None}


from . import ops as _ops  # noqa: E402  (ops needs Node defined; Node's operators need ops)

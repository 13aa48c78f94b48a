"""The graph: `Node`, the backward pass and the `no_grad` switch.

A Node holds a numpy value, its gradient, the op that produced it, that op's parameters
and its parents. The ops themselves live in `ops.py`; this file knows how to record them
and how to walk the graph backwards. Node's operators call the functional API
(`functional.py`), which records the ops: that pair is the core's one import circle.
Backward reads in four steps, collect -> order -> seed -> loop, never recurses (graphs of
any depth work), and a node keeps no reference to its children, so a graph holds no
reference cycles and reference counting frees it.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from .dual import GraphValue, value
from .seams import seam
from .switch import Switch

if TYPE_CHECKING:
    from .ops import Op

__all__ = ["Node", "Constant", "apply", "record", "value", "no_grad", "enable_grad", "is_grad_enabled",
           "grad_mode", "graph_nodes", "stages", "as_float_array", "FLOAT_DTYPES", "NO_PARAMS",
           "vjp", "grad", "trace_backward"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # the dtypes a Node may hold
NO_PARAMS: dict[str, Any] = {}  # the params of ops without any (shared: never written to)
# Creation numbers: a node's parents are always created before it (see Node.backward).
_creation_order = itertools.count()
_creation_number = operator.attrgetter("_seq")
class _Freed(dict):
    """The params of a node that backward(free_graph=True) let go of its graph; the root's
    remembers the leaves that pass reached, so that zero_grad can still clear them."""

    used = False  # set by the first backward(free_graph=True): until then none is looked for

    def __init__(self, leaves: tuple[Node, ...] = ()) -> None:
        super().__init__()
        self.leaves = leaves


_FREED = _Freed()
# Leaves replaced by `assign` (an optimizer step), with the creation number at that moment:
# a graph node older than that was built from the old value.
_assigned: weakref.WeakKeyDictionary[Node, int] = weakref.WeakKeyDictionary()


# Whether ops record a graph (per thread, as in PyTorch: a no_grad block in one thread
# leaves the others recording).
grad_mode = Switch(True)


def is_grad_enabled() -> bool:
    """True unless inside a `no_grad()` block (of this thread)."""
    return grad_mode.enabled


def no_grad() -> AbstractContextManager[None]:
    """Context in which ops record no graph: results are constant leaves."""
    return grad_mode.set_to(False)


def enable_grad() -> AbstractContextManager[None]:
    """Context that re-enables graph recording inside a `no_grad()` block."""
    return grad_mode.set_to(True)


def as_float_array(value: Any, argname: str = "data") -> np.ndarray:
    """Convert `value` to a float32/float64 array; Python and integer numbers become float64.

    Raises TypeError naming `argname` for booleans, complex, strings, objects and other
    float widths, so that a wrong dtype is caught where it enters rather than deep in an op.
    """
    array = np.asarray(value)
    dtype = array.dtype
    if dtype in FLOAT_DTYPES:
        return array
    if dtype.kind in "iu":
        return array.astype(np.float64)
    raise TypeError(
        f"{argname}: expected real numbers (float32, float64 or integers), "
        f"got an array of dtype {dtype}"
    )


class Node(GraphValue):
    """A value in the graph: `data` (an ndarray; a numpy scalar when 0-d), `grad`, the `op`
    that made it, its `parents`.

    `grad` stays None until a backward pass reaches the node; afterwards it is an array of
    `data`'s shape and dtype. Gradients *accumulate* across `backward()` calls, as in
    PyTorch: call `zero_grad()` between passes when you want fresh ones.
    """

    __slots__ = ("data", "grad", "name", "requires_grad", "parents", "_op", "_params", "_seq",
                 "__weakref__")

    def __init__(self, data: Any, name: str | None = None, requires_grad: bool = True) -> None:
        if type(data) is float:
            data = np.float64(data)
        else:
            data = as_float_array(data)
            # 0-d values are numpy scalars (np.float64 / np.float32): what numpy's own 0-d
            # arithmetic returns, and what keeps scalar graphs cheap.
            data = data[()] if data.ndim == 0 else data
        self.data = data
        self.grad: Any = None
        self.name = name
        self.requires_grad = bool(requires_grad)
        self.parents: tuple[Node, ...] = ()
        self._op: type[Op] | None = None
        self._params: Any = NO_PARAMS
        self._seq = next(_creation_order)

    @staticmethod
    def _result(data: Any, op: type[Op] | None, parents: tuple[Node, ...], params: Any,
                requires_grad: bool) -> Node:
        """An op's output (data is already a checked float array or numpy scalar)."""
        node = object.__new__(Node)
        node.data = data
        node.grad = None
        node.name = None
        node.requires_grad = requires_grad
        node.parents = parents
        node._op = op
        node._params = params
        node._seq = next(_creation_order)
        return node

    # --- introspection -------------------------------------------------------------
    @property
    def op(self) -> str | None:
        """Name of the op that produced this node (e.g. "sub", "batchnorm"); None for a leaf."""
        return None if self._op is None else self._op.name

    @property
    def op_def(self) -> type[Op] | None:
        """The op definition itself (forward, VJP and the local-derivative formula)."""
        return self._op

    @property
    def params(self) -> MappingProxyType:
        """The op's parameters (e.g. {"axis": (0,), "keepdims": True} for a mean), read-only."""
        return MappingProxyType(self._params)

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
    def creation_number(self) -> int:
        """Increases with every node made: a node's parents always have smaller ones."""
        return self._seq

    @property
    def is_leaf(self) -> bool:
        return self._op is None

    @property
    def freed(self) -> bool:
        """True once backward(free_graph=True) has let go of this op node's parents."""
        return isinstance(self._params, _Freed)

    def item(self) -> float:
        """The value of a size-1 node as a Python float."""
        return float(self.data.item())

    def named(self, name: str) -> Node:
        """Set `name` (a stage label shown by `explain` and the viewer) and return self."""
        self.name = name
        return self

    def __repr__(self) -> str:
        """Like PyTorch's: the values (abbreviated when large), then name, op, grad."""
        with np.printoptions(threshold=20, edgeitems=3, precision=4, linewidth=88):
            value = np.array2string(np.asarray(self.data), separator=", ", prefix="Node(")
            parts = [value]
            if self.data.dtype != np.float64:
                parts.append(f"dtype={self.data.dtype}")
            if self.name:
                parts.append(f"name={self.name!r}")
            if self._op is not None:
                parts.append(f"op={self.op!r}")
            if self.grad is not None:
                grad = np.array2string(np.asarray(self.grad), separator=", ",
                                       prefix="Node(grad=")
                parts.append(f"grad={grad}")
            elif not self.requires_grad:
                parts.append("requires_grad=False")
        return f"Node({', '.join(parts)})"

    # --- backward ------------------------------------------------------------------
    def backward(self, grad: Any = None, *, free_graph: bool = False) -> None:
        """Backpropagate from this node, adding d(self)/d(node) * grad into every `node.grad`.

        grad: upstream gradient of `self`'s shape; may be omitted only for a size-1 node (it
        is then 1). Gradients accumulate across calls; use `zero_grad()` to clear them.
        Every node of the graph keeps its gradient (see `_GradStore` for what they alias).
        free_graph=True works as PyTorch's default: each op node lets go of its parents as
        soon as the pass is done with it, so intermediates are freed during the pass; only
        leaves and this node get gradients, and the graph cannot be backpropagated again.
        """
        seed = self._seed(grad)
        if not self.requires_grad:
            raise ValueError(
                "backward: this node does not require grad (it was built from constants or "
                "inside no_grad()), so there is nothing to differentiate"
            )
        store = _GradStore(seed)
        # Every total first, then every .grad: a VJP that raises midway leaves no gradient
        # changed (the pass is all or nothing, so a retry does not count anything twice).
        if not free_graph:
            for node, total in list(_totals(self, seed)):
                store.keep(node, total)
            return
        _Freed.used = True
        kept = [(node, total) for node, total in _totals(self, seed, free_graph=True)
                if node._op is None or node is self]
        leaves = [node for node, _ in kept if node._op is None]
        for node, total in kept:
            store.keep(node, total)
        if self._op is not None:
            self._params = _Freed(tuple(leaves))  # zero_grad can still find them

    def _seed(self, grad: Any) -> Any:
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

    def _collect(self) -> list[Node]:
        order = _reachable(self, requires_grad_only=True)
        if _Freed.used and any(isinstance(node._params, _Freed) for node in order):
            raise ValueError(
                "backward: this graph was already freed by backward(free_graph=True); "
                "build it again to backpropagate a second time"
            )
        if _assigned:
            _check_not_assigned_since(order)
        return order

    def zero_grad(self) -> None:
        """Clear `grad` on this node and on every node of the graph that produced it.

        After backward(free_graph=True), which let go of the graph, it clears this node and
        the leaves that pass gave gradients to.
        """
        nodes = graph_nodes(self)
        if isinstance(self._params, _Freed):
            nodes += list(self._params.leaves)
        for node in nodes:
            if node.grad is not None:
                node.grad = None

    def assign(self, value: Any) -> None:
        """Replace this leaf's value by `value` (same shape and dtype), as an optimizer step does.

        The old array is not written to (a caller's array passed to Node() keeps its values).
        A graph built from the old value can no longer be backpropagated: backward raises
        instead of silently using the new value (PyTorch's "modified by an inplace operation").
        """
        if self._op is not None:
            raise ValueError(f"assign: only a leaf's value can be replaced; this node is the "
                             f"result of {self.op!r}")
        array = as_float_array(value, "value")
        if array.shape != self.data.shape or array.dtype != self.data.dtype:
            raise ValueError(f"value: expected shape {self.data.shape} and dtype {self.data.dtype} "
                             f"(this node's), got shape {array.shape} and dtype {array.dtype}")
        self.data = array[()] if array.ndim == 0 else array
        _assigned[self] = next(_creation_order)

    # --- operators (the ops themselves live in ops.py) ------------------------------
    def __add__(self, other: Any) -> Node:
        return _functional.add(self, other)

    def __radd__(self, other: Any) -> Node:
        return _functional.add(other, self)

    def __sub__(self, other: Any) -> Node:
        return _functional.sub(self, other)

    def __rsub__(self, other: Any) -> Node:
        return _functional.sub(other, self)

    def __mul__(self, other: Any) -> Node:
        return _functional.mul(self, other)

    def __rmul__(self, other: Any) -> Node:
        return _functional.mul(other, self)

    def __truediv__(self, other: Any) -> Node:
        return _functional.div(self, other)

    def __rtruediv__(self, other: Any) -> Node:
        return _functional.div(other, self)

    def __pow__(self, other: Any) -> Node:
        return _functional.pow(self, other)

    def __rpow__(self, other: Any) -> Node:
        return _functional.pow(other, self)

    def __matmul__(self, other: Any) -> Node:
        return _functional.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Node:
        return _functional.matmul(other, self)

    def __neg__(self) -> Node:
        return _functional.neg(self)

    # Comparisons give boolean arrays, as masks (they have no gradient). `==` stays
    # identity: nodes are dictionary keys.
    def __gt__(self, other: Any) -> np.ndarray:
        return self.data > value(other)

    def __ge__(self, other: Any) -> np.ndarray:
        return self.data >= value(other)

    def __lt__(self, other: Any) -> np.ndarray:
        return self.data < value(other)

    def __le__(self, other: Any) -> np.ndarray:
        return self.data <= value(other)

    # numpy must defer to the reflected operators above instead of broadcasting a Node
    # into an object array (`np.ones(3) * node` should give a Node).
    __array_ufunc__ = None

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Node:
        return _functional.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Node:
        return _functional.mean(self, axis=axis, keepdims=keepdims)

    def sqrt(self) -> Node:
        return _functional.sqrt(self)

    def exp(self) -> Node:
        return _functional.exp(self)

    def log(self) -> Node:
        return _functional.log(self)

    def relu(self) -> Node:
        return _functional.relu(self)

    def tanh(self) -> Node:
        return _functional.tanh(self)

    def reshape(self, *shape: Any) -> Node:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _functional.reshape(self, shape)

    def transpose(self, *axes: Any) -> Node:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _functional.transpose(self, axes or None)

    def astype(self, dtype: Any) -> Node:
        return _functional.astype(self, dtype)

    @property
    def T(self) -> Node:  # noqa: N802 - numpy's name
        return _functional.transpose(self, None)

    # What dual.py's helpers (which VJPs are written with) call on a Node.
    def broadcast_to(self, shape: tuple[int, ...]) -> Node:
        """This node broadcast to `shape` with numpy's rules: (D,) -> (N, D)."""
        return _functional.broadcast_to(self, shape)

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Node:
        """a where `condition` holds, else b (all broadcast together), recorded as the where op."""
        return _functional.where(condition, a, b)

    def apply_op(self, op: type[Op], **params: Any) -> Node:
        """`op` run on this node and recorded (what dual.GraphValue declares)."""
        return apply(op, (self,), **params)

    # Indexing and extremes (ops_index.py, ops_reduce.py).
    def __getitem__(self, index: Any) -> Node:
        return _functional.index(self, index)

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Node:
        """The largest value over `axis`; ties share the gradient evenly (PyTorch's amax rule)."""
        return _functional.max(self, axis=axis, keepdims=keepdims)

    def min(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Node:
        """The smallest value over `axis`; ties share the gradient evenly (PyTorch's amin rule)."""
        return _functional.min(self, axis=axis, keepdims=keepdims)


def apply(op: type[Op], parents: tuple[Node, ...], **params: Any) -> Node:
    """Run `op` on the parents' values and record the result as a node of the graph."""
    inputs = []  # the parents' values, and whether any parent needs a gradient: one pass
    requires_grad = False
    for parent in parents:
        inputs.append(parent.data)
        requires_grad = requires_grad or parent.requires_grad
    out = op.forward(*inputs, **params)
    if type(out) is np.ndarray and out.ndim == 0:  # 0-d values are kept as numpy scalars
        out = out[()]
    if not grad_mode.enabled:  # inside no_grad(): a leaf that remembers nothing
        return Node._result(out, None, (), NO_PARAMS, False)
    return Node._result(out, op, parents, params or NO_PARAMS, requires_grad)


def record(op: type[Op], parents: tuple[Node, ...], out: Any, **params: Any) -> Node:
    """Record `out`, the value `op.forward` gives on the parents' values with `params`, as a
    node of the graph: `apply` for an op whose output was computed with its parameters."""
    if type(out) is np.ndarray and out.ndim == 0:  # 0-d values are kept as numpy scalars
        out = out[()]
    if not grad_mode.enabled:  # inside no_grad(): a leaf that remembers nothing
        return Node._result(out, None, (), NO_PARAMS, False)
    requires_grad = False
    for parent in parents:
        requires_grad = requires_grad or parent.requires_grad
    return Node._result(out, op, parents, params or NO_PARAMS, requires_grad)


class Constant(Node):
    """An immutable leaf: a number or array an op uses that never gets a gradient.

    Python numbers in `x * 0.5` become Constants shared by every graph that uses the same
    number (one per value and dtype), which is why none can be renamed or changed.
    """

    __slots__ = ()

    def __init__(self, value: Any, name: str | None = None) -> None:
        array = as_float_array(value, "value")
        data = array[()] if array.ndim == 0 else array.copy()
        if isinstance(data, np.ndarray):
            data.flags.writeable = False
        for slot, item in (("data", data), ("grad", None), ("name", name),
                           ("requires_grad", False), ("parents", ()), ("_op", None),
                           ("_params", NO_PARAMS), ("_seq", next(_creation_order))):
            object.__setattr__(self, slot, item)

    def __setattr__(self, attribute: str, value: Any) -> None:
        raise AttributeError(
            f"{attribute}: a Constant cannot be changed (it may be shared by several graphs); "
            f"make a Node(value, requires_grad=False) to have one of your own"
        )

    def named(self, name: str) -> Node:
        raise AttributeError(
            "name: a Constant cannot be renamed (it may be shared by several graphs); "
            "make a Node(value, name=..., requires_grad=False) to have a named one"
        )


class _GradStore:
    """Decides what each `.grad` keeps, so that no two gradients a user can edit share memory.

    - The root's `.grad` is a read-only view of the upstream passed to backward (no copy).
    - An intermediate's `.grad` is a read-only view of the array that flowed through it.
    - A leaf's `.grad` is a writeable array of its own (an optimizer may scale it in place):
      the flowing array itself when nothing else shows it, else a copy.
    - A second pass adds into a fresh array (`grad + upstream`), never in place.
    """

    def __init__(self, seed: Any) -> None:
        # Buffers already shown as some `.grad` (by the array that owns the memory), and
        # whether that `.grad` is writeable.
        self.shown: dict[int, bool] = {id(_owner(seed)): False}

    def keep(self, node: Node, upstream: Any) -> None:
        data = node.data
        if type(data) is not np.ndarray:  # a 0-d node: numpy scalars are immutable, kept as they are
            if type(upstream) is not type(data):
                upstream = _like(upstream, data)
            node.grad = upstream if node.grad is None else node.grad + upstream
            return
        if type(upstream) is not np.ndarray or upstream.dtype != data.dtype \
                or upstream.shape != data.shape:
            upstream = _like(upstream, data)
        if node.grad is not None:
            node.grad = node.grad + upstream
        elif node._op is None:
            node.grad = self._own_array(upstream)
        else:
            node.grad = self._read_only_view(upstream)

    def _own_array(self, upstream: np.ndarray) -> np.ndarray:
        owner = id(_owner(upstream))
        if owner in self.shown or not upstream.flags.writeable:
            upstream = upstream.copy()
            owner = id(upstream)
        self.shown[owner] = True
        return upstream

    def _read_only_view(self, upstream: np.ndarray) -> np.ndarray:
        if self.shown.setdefault(id(_owner(upstream)), False):
            # a leaf's editable gradient must not show through here
            upstream = upstream.copy()
            self.shown[id(upstream)] = False
        view = upstream.view()
        view.setflags(write=False)
        return view


def _like(upstream: Any, data: Any) -> Any:
    # A gradient in its node's dtype and shape (a numpy scalar for a 0-d node).
    if type(data) is not np.ndarray:
        return data.dtype.type(upstream)
    upstream = np.asarray(upstream)
    if upstream.dtype != data.dtype:
        upstream = upstream.astype(data.dtype)
    if upstream.shape != data.shape:
        upstream = np.broadcast_to(upstream, data.shape)
    return upstream


def _owner(array: Any) -> object:
    # numpy points a view's `base` at the array that owns the memory (or another view).
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


def _totals(root: Node, seed: Any, *, create_graph: bool = False, free_graph: bool = False
            ) -> Iterator[tuple[Node, Any]]:
    """Each node's total gradient d(root)/d(node) * seed, newest node first.

    The backward pass in four steps: collect the nodes that need a gradient, order them
    (creation numbers: popping the newest first is a topological order), seed the root, and
    loop: once a node's total is known (every consumer has added its part), yield it, then
    take what the node sends back to each parent (`vjp`, the one step of the loop a faster
    variant may stand in for; which function that is, is asked once per pass) and add it
    into that parent's pending total. With
    create_graph the VJPs run on the Nodes themselves, so every total is a Node whose graph
    is the backward computation (named "d" + the node's name), differentiable again.
    """
    order = root._collect()                      # 1. collect (checks before any change)
    order.sort(key=_creation_number)             # 2. order (popping also lets go of a node)
    pending: dict[Node, Any] = {root: seed}      # 3. seed
    step = vjp.seam.current()                    # (one node's step, looked up once per pass)
    while order:                                 # 4. loop
        node = order.pop()
        total = pending.pop(node, None)
        if total is None:  # no gradient flows here (only through constants)
            continue
        if create_graph and node.name is not None:
            total = _named_gradient(total, "d" + node.name)
        yield node, total
        if node._op is None:
            continue
        for parent, parent_grad in zip(node.parents, step(node, total, create_graph)):
            if parent_grad is not None and parent.requires_grad:
                previous = pending.get(parent)
                # A fresh sum, never `+=`: the arrays may be shared with other gradients.
                pending[parent] = parent_grad if previous is None else previous + parent_grad
        if free_graph:
            node.parents, node._params = (), _FREED


def trace_backward(root: Node, upstream: Any = None) -> list[tuple[Node, Any]]:
    """The backward pass as the engine runs it, without changing any `.grad`: each node
    that receives a gradient, in the order it is visited (newest first), with its total
    gradient. An op node's VJP runs right after its visit."""
    seed = root._seed(upstream)
    if not root.requires_grad:
        raise ValueError("root: this node does not require grad, so no backward pass runs")
    with no_grad():
        return [(node, total) for node, total in _totals(root, seed)]


def _check_not_assigned_since(order: list[Node]) -> None:
    for node in order:
        for parent in node.parents:
            stamp = _assigned.get(parent)
            if stamp is not None and stamp > node._seq:
                label = repr(parent.name) if parent.name else f"a {parent.shape} leaf"
                raise ValueError(
                    f"backward: {label} was given a new value (assign, e.g. an optimizer step) "
                    f"after this graph was built from its old one; run the forward pass "
                    f"again before backward"
                )


def _named_gradient(gradient: Node, name: str) -> Node:
    # A gradient Node is named after its forward node, unless it is already another's (an
    # add sends the same upstream to both inputs) or a leaf: then a named identity node.
    if gradient.name == name:  # the seed grad() made for a named output
        return gradient
    if gradient.name is None and gradient._op is not None:
        return gradient.named(name)
    return _functional.identity(gradient).named(name)


def grad(output: Node, inputs: Any, upstream: Any = None, create_graph: bool = False
         ) -> tuple[Any, ...]:
    """d(output)/d(input) * upstream for each of `inputs`, as torch.autograd.grad.

    output: a Node; upstream: an array (or Node) of output's shape, which may be omitted only
    for a one-element output (it is then 1). Returns one gradient per input, of the input's
    shape and dtype: arrays, or with create_graph=True Nodes whose graph is the backward computation
    (differentiable again, to any order; the total gradient of a named node is named "d" +
    its name). An input the output does not depend on gets zeros (every input does when
    the output depends on none, e.g. the second derivative of a linear function). No node's
    `.grad` changes.
    """
    if not isinstance(output, Node):
        raise TypeError(f"output: expected a Node, got {type(output).__name__}")
    inputs = (inputs,) if isinstance(inputs, Node) else tuple(inputs)
    for index, node in enumerate(inputs):
        if not isinstance(node, Node):
            raise TypeError(f"inputs[{index}]: expected a Node, got {type(node).__name__}")
    seed = output._seed(upstream)
    if create_graph:
        given = upstream if isinstance(upstream, Node) else None
        name = None if output.name is None else "d" + output.name
        seed = given if given is not None else Node(seed, name=name, requires_grad=False)
    wanted = set(inputs)
    found: dict[Node, Any] = {}
    with enable_grad() if create_graph else no_grad():
        for node, total in _totals(output, seed, create_graph=create_graph) \
                if output.requires_grad else ():
            if node in wanted:
                found[node] = total
    return tuple(_in_dtype_of(node, found[node]) if node in found
                 else _zeros_like(node, create_graph) for node in inputs)


def _in_dtype_of(node: Node, gradient: Any) -> Any:
    # A gradient has its input's dtype, as `.grad` does: a float32 input that met a float64
    # operand gets a float32 gradient (a Node gradient through a `cast` node).
    if isinstance(gradient, Node):
        return gradient if gradient.dtype == node.dtype else gradient.astype(node.dtype)
    return _like(gradient, node.data)


def _zeros_like(node: Node, as_node: bool) -> Any:
    zeros = np.zeros_like(node.data)
    zeros = zeros[()] if zeros.ndim == 0 else zeros
    return Node(zeros, requires_grad=False) if as_node else zeros


@seam(arrays_only=False)
def vjp(node: Node, upstream: Any, create_graph: bool = False) -> tuple[Any, ...]:
    """What `node`'s op sends back to each parent for `upstream` (d loss / d node): one
    gradient per parent, of the parent's shape (None: none). With create_graph the op's VJP
    runs on the Nodes themselves and the gradients are Nodes.

    Seam: fast/steps.py may stand in (per-op rules: numpy scalars without the array machinery,
    arrays with no gradient computed for a parent that requires none).
    """
    if create_graph:
        return node._op.backward(upstream, *node.parents, node, **node._params)
    inputs = [parent.data for parent in node.parents]
    return node._op.backward(upstream, *inputs, node.data, **node._params)


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


# Node's operators call the functional API, which records Nodes: imported last, once Node
# exists (the core's one import pair; every other import in the core points one way).
from . import functional as _functional  # noqa: E402

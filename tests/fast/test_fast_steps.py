"""The backward pass's per-node step (fast/steps.py) and the square's forward (fast/ops.py)
against the textbook: op by op on broadcast operands, and whole graphs with and without
the fast layer (staged normalizations, shared nodes, float32, what each `.grad` aliases)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn import fast
from tinygrad_bn.core import node as core_node
from tinygrad_bn.core.ops import PowConst
from tinygrad_bn.fast import steps

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
DTYPES = [np.float64, np.float32]
VARIANTS = {variant.name: variant for variant in fast.VARIANTS}
# Operand shapes that broadcast against (rows, cols) in every way the ops meet them.
SHAPES = ["full", "row", "column", "vector", "one", "scalar"]


def operand(rng, kind, rows, cols, dtype, positive=False):
    shape = {"full": (rows, cols), "row": (1, cols), "column": (rows, 1), "vector": (cols,),
             "one": (1, 1), "scalar": ()}[kind]
    values = rng.uniform(0.5, 2.0, shape) if positive else rng.standard_normal(shape)
    values = np.asarray(values, dtype=dtype)
    return values[()] if values.ndim == 0 else values


def same(fast_gradient, textbook_gradient, dtype):
    assert type(fast_gradient) is type(textbook_gradient)
    assert np.shape(fast_gradient) == np.shape(textbook_gradient)
    assert np.asarray(fast_gradient).dtype == np.asarray(textbook_gradient).dtype == dtype
    tol = 1e-13 if dtype == np.float64 else 1e-6
    scale = max(1.0, float(np.max(np.abs(textbook_gradient))))
    assert float(np.max(np.abs(np.asarray(fast_gradient, np.float64)
                               - np.asarray(textbook_gradient, np.float64)))) <= tol * scale


def check_step(node, upstream, dtype):
    fast_result = steps.node_step(node, upstream)
    textbook_result = steps.textbook_vjp(node, upstream)
    assert len(fast_result) == len(textbook_result) == len(node.parents)
    for parent, f, t in zip(node.parents, fast_result, textbook_result, strict=True):
        if parent.requires_grad:
            same(f, t, dtype)
        else:
            assert f is None  # the loop would have dropped the textbook's gradient


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       kinds=st.tuples(st.sampled_from(SHAPES), st.sampled_from(SHAPES)),
       wants=st.tuples(st.booleans(), st.booleans()), rows=st.integers(1, 70),
       cols=st.integers(1, 300))
def test_each_binary_step_is_the_textbook_vjp(dtype, seed, kinds, wants, rows, cols):
    rng = np.random.default_rng(seed)
    a = tb.Node(operand(rng, kinds[0], rows, cols, dtype), requires_grad=wants[0])
    b = tb.Node(operand(rng, kinds[1], rows, cols, dtype, positive=True), requires_grad=wants[1])
    for node in (a + b, a - b, a * b, a / b):
        upstream = rng.standard_normal(node.shape).astype(dtype)
        if type(node.data) is not np.ndarray:
            continue  # numpy scalars take the scalar rules (tested in test_fast.py)
        check_step(node, upstream, dtype)


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       shape=st.sampled_from([(64, 300), (3, 5, 7), (300,), (2, 1, 4), (1, 1)]),
       keepdims=st.booleans(), which=st.sampled_from(["first", "last", "all", "none"]),
       layout=st.sampled_from(["C", "F", "sliced"]))
def test_each_reduction_step_is_the_textbook_vjp(dtype, seed, shape, keepdims, which, layout):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    x = {"C": x, "F": np.asfortranarray(x), "sliced": np.repeat(x, 2, axis=-1)[..., ::2]}[layout]
    axis = {"first": 0, "last": -1, "all": None, "none": ()}[which]
    leaf = tb.Node(x)
    for node in (leaf.sum(axis=axis, keepdims=keepdims), leaf.mean(axis=axis, keepdims=keepdims)):
        upstream = np.asarray(rng.standard_normal(node.shape), dtype)
        if upstream.ndim == 0:
            continue  # a numpy-scalar upstream takes the textbook step (no rule for scalars)
        upstream = np.asfortranarray(upstream) if layout == "F" else upstream
        check_step(node, upstream, dtype)
        (spread,) = steps.node_step(node, upstream)
        assert not spread.flags.writeable  # as np.broadcast_to's view


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       p=st.sampled_from([2.0, 3.0, 0.5, 0.0, -1.0]), size=st.sampled_from([(3, 4), (128, 256)]))
def test_the_power_step_is_the_textbook_vjp(dtype, seed, p, size):
    rng = np.random.default_rng(seed)
    base = tb.Node(rng.uniform(0.5, 2.0, size).astype(dtype))
    node = base ** p
    check_step(node, rng.standard_normal(size).astype(dtype), dtype)
    constant = tb.Node(base.data, requires_grad=False) ** p
    assert steps.node_step(constant, np.ones(size, dtype)) == (None,)


def test_spread_is_numpys_broadcast_view():
    small = np.arange(6.0).reshape(1, 6)
    view = steps.spread(small, (4, 6))
    np.testing.assert_array_equal(view, np.broadcast_to(small, (4, 6)))
    assert not view.flags.writeable and np.shares_memory(view, small)
    assert view.strides == (0, 8)
    with pytest.raises(ValueError):
        steps.spread(small, (4, 5))  # numpy's own error
    np.testing.assert_array_equal(steps.spread(small.T, (6, 3)), np.broadcast_to(small.T, (6, 3)))


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       layout=st.sampled_from(["C", "F", "transposed"]), size=st.sampled_from([(3, 4), (64, 256)]))
def test_the_square_forward_is_at_least_as_exact_as_the_power(dtype, seed, layout, size):
    variant = VARIANTS["PowConst.forward"]
    x = (np.random.default_rng(seed).standard_normal(size) * 1e3).astype(dtype)
    x = {"C": x, "F": np.asfortranarray(x), "transposed": np.ascontiguousarray(x.T).T}[layout]
    assert variant.when(x, p=2.0) and not variant.when(x, p=3.0)
    squared = variant.fast(x, p=2.0)
    assert squared.dtype == dtype and squared.shape == x.shape
    np.testing.assert_array_equal(squared, x * x)  # one correctly rounded product
    if dtype == np.float32:  # the exact square of a float32 fits a float64: round it once
        np.testing.assert_array_equal(squared, (x.astype(np.float64) ** 2).astype(np.float32))
    np.testing.assert_allclose(squared, variant.textbook(x, p=2.0), rtol=np.finfo(dtype).eps)
    assert PowConst.forward(x, p=2.0).dtype == dtype


# --- whole graphs, with and without the fast layer ------------------------------------
def staged_gradients(kind, shape, dtype, groups=None):
    rng = np.random.default_rng(1)
    x = tb.Node(rng.standard_normal(shape).astype(dtype) * 3 + 5, name="x")
    features = shape[1:] if kind == "layer" else (shape[1],)
    gamma = tb.Node((1 + 0.1 * rng.standard_normal(features)).astype(dtype), name="gamma")
    beta = tb.Node((0.1 * rng.standard_normal(features)).astype(dtype), name="beta")
    out = tb.norm_staged(kind, x, gamma, beta, groups=groups)
    out.backward(rng.standard_normal(shape).astype(dtype))
    return {name: node.grad for name, node in tb.stages(out).items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, shape, groups", [("batch", (64, 256), None),
                                                 ("spatial", (4, 3, 5, 6), None),
                                                 ("layer", (8, 5, 7), None),
                                                 ("group", (4, 6, 3, 3), 2)])
def test_staged_graphs_backpropagate_as_the_core_does(dtype, kind, shape, groups):
    fast_grads = staged_gradients(kind, shape, dtype, groups)
    with fast.disabled():
        core_grads = staged_gradients(kind, shape, dtype, groups)
    assert fast_grads.keys() == core_grads.keys()
    for name, gradient in fast_grads.items():
        if gradient is None:  # the named constants (eps, 1) get none on either path
            assert core_grads[name] is None, name
            continue
        assert gradient.dtype == dtype, name
        same(gradient, core_grads[name], dtype)


def test_shared_nodes_and_broadcast_operands_get_every_part():
    def build():
        x = tb.Node(np.linspace(0.5, 2.0, 12).reshape(3, 4), name="x")
        w = tb.Node(np.array([0.5, -1.0, 2.0, 1.5]), name="w")
        c = tb.Node(np.array([[1.0], [2.0], [3.0]]), name="c", requires_grad=False)
        h = x * w  # used three times below
        y = ((h - c) / (h + 1.0) + h * h).mean(axis=0) - h.sum(axis=1, keepdims=True).mean()
        y.sum().backward()
        return x, w, h

    fast_x, fast_w, fast_h = build()
    with fast.disabled():
        core_x, core_w, core_h = build()
    for f, t in ((fast_x, core_x), (fast_w, core_w), (fast_h, core_h)):
        same(f.grad, t.grad, np.float64)


def test_create_graph_takes_the_textbook_step(monkeypatch):
    calls = []
    for op, rule in list(steps.ARRAY_STEPS.items()):
        monkeypatch.setitem(steps.ARRAY_STEPS, op,
                            lambda g, n, rule=rule: calls.append(n) or rule(g, n))
    x = tb.Node(np.array([1.0, 2.0, 3.0]), name="x")
    (dx,) = tb.grad((x * x).sum(), [x], create_graph=True)
    assert isinstance(dx, tb.Node) and not calls
    (ddx,) = tb.grad(dx.sum(), [x])
    np.testing.assert_array_equal(ddx, [2.0, 2.0, 2.0])
    (x * x).sum().backward()
    assert calls  # a first-order pass takes the array rules
    assert core_node.vjp.seam.current() is steps.node_step


def test_what_each_grad_aliases_on_the_array_step():
    x = tb.Node(np.ones((4, 3)), name="x")
    gamma = tb.Node(np.full(3, 2.0), name="gamma")
    upstream = np.ones((4, 3))
    mu = x.mean(axis=0, keepdims=True)
    xmu = x - mu
    out = gamma * xmu + xmu.sum(axis=0)
    out.backward(upstream)
    # the root's and the intermediates' are read-only; the leaves' writeable and unshared
    assert not out.grad.flags.writeable and np.shares_memory(out.grad, upstream)
    assert not xmu.grad.flags.writeable and not mu.grad.flags.writeable
    for leaf in (x, gamma):
        assert leaf.grad.flags.writeable
        for other in (out, xmu, mu, x, gamma):
            assert other is leaf or not np.shares_memory(leaf.grad, other.grad)
    assert not np.shares_memory(x.grad, upstream)
    x.grad *= 0  # an optimizer may scale it in place
    np.testing.assert_array_equal(upstream, np.ones((4, 3)))


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1),
       case=st.sampled_from([((5, 7), (7,)), ((5, 7), (1, 7)), ((5, 7), (5, 1)), ((5, 7), ()),
                             ((3, 5, 7), (5, 1)), ((3, 5, 7), (1, 1, 7)), ((2, 3), (2, 3)),
                             ((4, 1, 6), (1, 6))]))
def test_reduce_to_makes_the_textbook_sums(dtype, seed, case):
    grad_shape, shape = case
    grad = np.random.default_rng(seed).standard_normal(grad_shape).astype(dtype)
    fast_sum, textbook_sum = steps.reduce_to(grad, shape), tb.ops.unbroadcast(grad, shape)
    assert type(fast_sum) is type(textbook_sum) and np.shape(fast_sum) == shape
    np.testing.assert_array_equal(fast_sum, textbook_sum)  # the same sums in the same order

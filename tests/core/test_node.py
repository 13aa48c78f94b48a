"""Engine semantics: graph walking, accumulation, no_grad, dtypes and backward's errors."""

import gc
import weakref

import numpy as np
import pytest

import tinygrad_bn as tb


def test_square_by_self_multiplication_gets_both_edges():
    a = tb.Node(3.0)
    (a * a).backward()
    assert a.grad == 6.0


def test_repeated_use_sums_every_path():
    a = tb.Node(2.0)
    b = a + a
    c = b + b
    c.backward()
    assert a.grad == 4.0 and b.grad == 2.0


def test_diamond_receives_the_sum_of_both_paths():
    x = tb.Node(np.array([1.0, 2.0]))
    left = x * 3.0
    right = x.exp()
    out = (left * right).sum()
    out.backward()
    expected = 3.0 * np.exp(x.data) + 3.0 * x.data * np.exp(x.data)
    np.testing.assert_allclose(x.grad, expected)


def test_deep_chain_has_no_recursion_limit():
    x = tb.Node(1.0)
    y = x
    for _ in range(100_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad == 1.0


def test_gradients_accumulate_across_calls_until_zero_grad():
    x = tb.Node(np.array([1.0, 2.0, 3.0]))
    y = (x * x).sum()
    y.backward()
    y.backward()
    np.testing.assert_array_equal(x.grad, 4 * x.data)
    # The intermediate's gradient accumulates too, but a second pass does not re-send
    # the first pass's gradient downstream (that would give 6x, not 4x).
    y.zero_grad()
    assert x.grad is None and y.grad is None
    y.backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data)


def test_gradient_arrays_are_not_shared_between_nodes():
    a = tb.Node(np.ones(3))
    b = tb.Node(np.ones(3))
    upstream = np.ones(3)
    out = a + b
    out.backward(upstream)
    a.grad += 1  # a user editing one gradient must not change another, nor the upstream
    np.testing.assert_array_equal(a.grad, np.full(3, 2.0))
    np.testing.assert_array_equal(b.grad, np.ones(3))
    np.testing.assert_array_equal(out.grad, np.ones(3))
    np.testing.assert_array_equal(upstream, np.ones(3))


def test_leaf_gradient_of_a_reduction_is_a_writeable_array():
    x = tb.Node(np.ones((2, 3)))
    x.sum().backward()
    assert x.grad.flags.writeable and x.grad.shape == (2, 3)


def test_no_grad_records_nothing_and_restores_the_mode():
    x = tb.Node(np.ones(2))
    with tb.no_grad():
        assert not tb.is_grad_enabled()
        y = x * 2
        with tb.enable_grad():
            z = x * 3
    assert tb.is_grad_enabled()
    assert y.parents == () and y.op is None and not y.requires_grad
    assert z.parents[0] is x and z.requires_grad
    with pytest.raises(ValueError, match="does not require grad"):
        y.sum().backward()


def test_constants_get_no_gradient():
    x = tb.Node(np.ones(2))
    c = tb.Node(np.full(2, 5.0), requires_grad=False)
    (x * c).sum().backward()
    np.testing.assert_array_equal(x.grad, [5.0, 5.0])
    assert c.grad is None


def test_dtype_rules():
    assert tb.Node(3).dtype == np.float64
    assert tb.Node([1, 2]).dtype == np.float64
    assert tb.Node(np.ones(2, np.float32)).dtype == np.float32
    for bad in (np.array([True]), np.array([1 + 2j]), np.array(["a"]), np.ones(2, np.float16)):
        with pytest.raises(TypeError, match=f"got an array of dtype {bad.dtype}"):
            tb.Node(bad)


def test_float32_stays_float32_with_python_numbers():
    x = tb.Node(np.ones(3, np.float32))
    y = (2.0 * x + 1) / 3.0 - 0.5
    y = (y ** 2).sqrt().mean()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


def test_numpy_array_on_the_left_gives_a_node():
    x = tb.Node(np.ones(3))
    y = np.arange(3.0) * x
    assert isinstance(y, tb.Node)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 2.0])


def test_backward_on_non_scalar_needs_an_upstream():
    x = tb.Node(np.ones((2, 3)))
    y = x * 2
    with pytest.raises(ValueError, match=r"has shape \(2, 3\), so pass an upstream"):
        y.backward()
    assert x.grad is None


def test_upstream_of_the_wrong_shape_is_rejected_without_touching_grads():
    x = tb.Node(np.ones((2, 3)))
    y = x * 2
    y.backward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"grad must have the node's shape \(2, 3\), got shape \(3, 2\)"):
        y.backward(np.ones((3, 2)))
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 2.0))


def test_nan_and_inf_propagate_like_numpy():
    x = tb.Node(np.array([np.nan, np.inf, 1.0]))
    with np.errstate(all="ignore"):
        y = (x * 2).sum()
        y.backward()
    assert np.isnan(y.data)
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])


def test_graph_has_no_reference_cycles():
    gc.collect()
    gc.disable()
    try:
        x = tb.Node(np.ones(3))
        y = (x * 2 + 1).sum()
        y.backward()
        ref = weakref.ref(y)
        del y
        assert ref() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_graph_nodes_and_stages():
    x = tb.Node(np.ones(2), name="x")
    h = (x * 2).named("h")
    out = (h + x).named("out")
    order = tb.graph_nodes(out)
    assert order[-1] is out and order.index(x) < order.index(h)
    assert set(tb.stages(out)) == {"x", "h", "out"}


def test_matmul_and_repr():
    w = tb.Node(np.eye(2), name="w")
    v = tb.Node(np.array([1.0, 2.0]))
    out = (w @ v).sum()
    out.backward()
    np.testing.assert_array_equal(w.grad, [[1.0, 2.0], [1.0, 2.0]])
    assert "op='sum'" in repr(out) and "'w'" in repr(w)


def test_python_number_constants_are_shared_and_keep_their_sign():
    x = tb.Node(np.ones(2))
    a, b = x * 0.5, x * 0.5
    assert a.parents[1] is b.parents[1] and not a.parents[1].requires_grad
    assert np.signbit((x * -0.0).parents[1].data) and not np.signbit((x * 0.0).parents[1].data)
    assert (tb.Node(np.ones(2, np.float32)) * 0.5).parents[1].dtype == np.float32


def test_the_core_tests_run_with_and_without_the_fast_layer(engine_path):
    # conftest.py runs this file twice; the second time the textbook alone answers.
    assert tb.fast.is_enabled() is (engine_path == "with_fast_layer")
    x = tb.Node(1.5)
    ((x * x + 1.0) / x).backward()
    assert x.grad == pytest.approx(1 - 1 / 1.5**2, rel=1e-15)


def test_scalar_graphs_take_the_scalar_step_only_with_the_fast_layer(engine_path, monkeypatch):
    from tinygrad_bn.core import node as core_node
    from tinygrad_bn.fast import scalars

    calls = []
    rules = dict(scalars.SCALAR_VJPS)
    monkeypatch.setitem(scalars.SCALAR_VJPS, tb.ops.Mul,
                        lambda g, n: calls.append(n) or rules[tb.ops.Mul](g, n))
    x = tb.Node(2.0)
    (x * 3.0).backward()
    assert x.grad == 3.0
    assert len(calls) == (1 if engine_path == "with_fast_layer" else 0)
    # The loop that ran is the core's: the per-node step is its one declared seam.
    assert core_node.vjp.seam.name == "vjp"


@pytest.mark.parametrize("create_graph", [False, True])
def test_grad_returns_each_inputs_dtype(create_graph):
    x = tb.Node(np.array([1.0, 2.0], dtype=np.float32), name="x")
    w = tb.Node(np.array([0.5, -1.5]), name="w")  # float64
    out = (x * w).sum()
    dx, dw = tb.grad(out, [x, w], create_graph=create_graph)
    if create_graph:
        dx, dw = dx.data, dw.data
    assert dx.dtype == np.float32 and dw.dtype == np.float64
    out.backward()
    assert x.grad.dtype == dx.dtype
    np.testing.assert_array_equal(dx, x.grad)
    np.testing.assert_array_equal(dw, [1.0, 2.0])


def test_grad_of_a_float32_scalar_is_float32():
    x = tb.Node(np.float32(2.0))
    (dx,) = tb.grad(x * np.float64(3.0), [x])
    assert type(dx) is np.float32 and dx == 3.0


def test_a_scalar_nodes_grad_is_a_numpy_scalar_of_its_dtype_whatever_arrives():
    # float64 gradients reach a float32 leaf; a 0-d array arrives from the sum's VJP (a
    # broadcast to shape ()); a second pass adds to the first.
    x = tb.Node(np.float32(2.0))
    y = x * np.float64(3.0)
    for _ in range(2):
        y.backward()
    assert type(x.grad) is np.float32 and x.grad == 6.0
    z = tb.Node(2.0)
    total = z.sum() * z
    total.backward()
    assert type(z.grad) is np.float64 and z.grad == 4.0
    assert all(type(node.grad) is np.float64 for node in tb.graph_nodes(total)
               if node.requires_grad)


def test_a_seam_names_the_function_its_calls_go_to(engine_path):
    from tinygrad_bn.core.seams import SEAMS, seam, textbook_only

    def textbook(x):
        """Seam: this test's stand-ins."""
        return "textbook"

    def fast(x):
        return "fast"

    def declared(name, **options):
        textbook.__qualname__ = name  # one seam per name
        dispatch = seam(**options)(textbook)
        SEAMS.pop(f"{textbook.__module__}.{name}")  # not one of the library's seams
        return dispatch

    fast_runs = engine_path == "with_fast_layer"
    conditional = declared("conditional")
    assert conditional.seam.current() is textbook  # nothing registered
    conditional.seam.add(fast, when=lambda x: x.size > 2)
    # a condition is asked call by call
    assert conditional.seam.current() is (conditional if fast_runs else textbook)
    every_call = declared("every_call", arrays_only=False)
    every_call.seam.add(fast)
    assert every_call.seam.current() is (fast if fast_runs else textbook)
    assert every_call(np.float64(1.0)) == ("fast" if fast_runs else "textbook")
    with textbook_only():
        assert every_call.seam.current() is textbook
    arrays_only = declared("arrays_only")
    arrays_only.seam.add(fast)  # without a condition, still only for arrays
    assert arrays_only.seam.current() is (arrays_only if fast_runs else textbook)
    assert arrays_only(np.float64(1.0)) == "textbook"
    assert arrays_only(np.zeros(1)) == ("fast" if fast_runs else "textbook")


def test_a_backward_that_fails_midway_changes_no_gradient(monkeypatch):
    x = tb.Node(np.array([1.0, 2.0]), name="x")
    w = tb.Node(np.array([3.0, 4.0]), name="w")
    s = ((x * w).tanh()).sum()
    s.backward()
    before = {name: node.grad.copy() for name, node in (("x", x), ("w", w), ("s", s))}

    def broken(*args, **kwargs):
        raise RuntimeError("a VJP that fails")

    # Tanh's VJP runs after the sum's has produced the totals of s and of the tanh node.
    monkeypatch.setattr(tb.core.ops.Tanh, "backward", staticmethod(broken))
    with pytest.raises(RuntimeError, match="a VJP that fails"):
        s.backward()
    for name, node in (("x", x), ("w", w), ("s", s)):
        assert np.array_equal(node.grad, before[name]), name

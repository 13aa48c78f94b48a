"""Every registered primitive's VJP against central differences, broadcasting included."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes
from index_shape_cases import CASES as INDEX_SHAPE_CASES

import tinygrad_bn as tb
from tinygrad_bn.core.ops import OPS

SMALL = dict(min_dims=0, max_dims=3, min_side=1, max_side=4)


def values(rng: np.random.Generator, shape: tuple[int, ...], domain: str) -> np.ndarray:
    """Random float64 values where the op is smooth, far enough from its kinks for h=1e-5."""
    magnitude = rng.uniform(0.5, 2.0, size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape)
    if domain == "real":
        return rng.uniform(-2.0, 2.0, size=shape)
    if domain == "positive":
        return magnitude
    if domain in ("nonzero", "kinked_at_zero"):
        return sign * magnitude
    raise AssertionError(f"unknown domain {domain}")


def elementwise_case(op_cls):
    arity = len(op_cls.domain)
    fn = {
        "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
        "Div": lambda a, b: a / b, "Pow": lambda a, b: a ** b,
        "Neg": lambda a: -a, "Sqrt": tb.sqrt, "Exp": tb.exp, "Log": tb.log,
        "Relu": tb.relu, "Tanh": tb.tanh,
    }[op_cls.__name__]

    @st.composite
    def build(draw):
        if arity == 2:
            shapes = draw(mutually_broadcastable_shapes(num_shapes=2, **SMALL)).input_shapes
        else:
            shapes = (draw(array_shapes(**SMALL)),)
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        arrays = [values(rng, shape, domain) for shape, domain in zip(shapes, op_cls.domain)]
        return fn, arrays

    return build()


def axis_strategy(ndim):
    if ndim == 0:
        return st.just(None)
    single = st.integers(-ndim, ndim - 1)
    several = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)
    return st.one_of(st.just(None), single, several)


@st.composite
def reduction_case(draw, reduce):
    shape = draw(array_shapes(**SMALL))
    axis = draw(axis_strategy(len(shape)))
    keepdims = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (lambda a: reduce(a, axis=axis, keepdims=keepdims)), [rng.uniform(-2, 2, shape)]


@st.composite
def pow_const_case(draw):
    shape = draw(array_shapes(**SMALL))
    exponent = draw(st.sampled_from([2, 3, 0.5, -1.0, 1.7]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (lambda a: a ** exponent), [values(rng, shape, "positive")]


@st.composite
def reshape_case(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    size = int(np.prod(shape))
    target = draw(st.sampled_from([(size,), (1, size), (size, 1), (-1,)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (lambda a: a.reshape(target)), [rng.uniform(-2, 2, shape)]


@st.composite
def transpose_case(draw):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    axes = draw(st.permutations(range(len(shape))).map(tuple) | st.just(None))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (lambda a: a.transpose(axes) if axes else a.T), [rng.uniform(-2, 2, shape)]


@st.composite
def matmul_case(draw):
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    kind = draw(st.sampled_from(["mm", "vm", "mv", "vv", "batched", "broadcast"]))
    a_shape, b_shape = {
        "mm": ((n, k), (k, m)), "vm": ((k,), (k, m)), "mv": ((n, k), (k,)), "vv": ((k,), (k,)),
        "batched": ((2, n, k), (2, k, m)), "broadcast": ((3, n, k), (k, m)),
    }[kind]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (lambda a, b: a @ b), [rng.uniform(-2, 2, a_shape), rng.uniform(-2, 2, b_shape)]


@st.composite
def where_case(draw):
    shapes = draw(mutually_broadcastable_shapes(num_shapes=3, **SMALL)).input_shapes
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    condition = rng.random(shapes[2]) > 0.5
    return (lambda a, b: tb.where(condition, a, b)), [rng.uniform(-2, 2, shapes[0]),
                                                      rng.uniform(-2, 2, shapes[1])]


@st.composite
def broadcast_to_case(draw):
    shape = draw(array_shapes(**SMALL))
    target = draw(mutually_broadcastable_shapes(num_shapes=1, base_shape=shape, **SMALL)).result_shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (lambda a: tb.ops.broadcast_to(a, target)), [rng.uniform(-2, 2, shape)]


@st.composite
def unary_case(draw, fn):
    shape = draw(array_shapes(**SMALL))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return fn, [rng.uniform(-2, 2, shape)]


CASES = {
    **{name: elementwise_case(OPS[name])
       for name in ("Add", "Sub", "Mul", "Div", "Pow", "Neg", "Sqrt", "Exp", "Log", "Relu",
                    "Tanh")},
    "PowConst": pow_const_case(),
    "Sum": reduction_case(tb.sum),
    "Mean": reduction_case(tb.mean),
    "Reshape": reshape_case(),
    "Transpose": transpose_case(),
    "MatMul": matmul_case(),
    "Where": where_case(),
    "BroadcastTo": broadcast_to_case(),
    "Cast": unary_case(lambda a: a.astype(np.float64)),
    "Identity": unary_case(tb.identity),
    # indexing, extremes, padding, joining, windows: (ours, PyTorch's, inputs) drawn together
    **{name: case.map(lambda drawn: (drawn[0], drawn[2])) for name, case in INDEX_SHAPE_CASES.items()},
}


def test_every_registered_op_has_a_gradient_case():
    assert set(CASES) == set(OPS), "add a case for each new op"


@pytest.mark.parametrize("op_name", sorted(OPS))
def test_vjp_matches_central_differences(op_name):
    @settings(max_examples=30, deadline=None)
    @given(case=CASES[op_name])
    def check(case):
        fn, arrays = case
        result = tb.gradcheck(fn, *arrays, tol=1e-7, normwise=True)
        assert result.ok, str(result)
        # The gradients have their inputs' shapes (unbroadcast did its job).
        nodes = [tb.Node(a) for a in arrays]
        out = fn(*nodes)
        out.backward(np.ones(out.shape))
        for node in nodes:
            assert node.grad.shape == node.data.shape and node.grad.dtype == np.float64

    check()


def test_unbroadcast_sums_added_and_stretched_axes():
    grad = np.arange(24.0).reshape(2, 3, 4)
    assert tb.unbroadcast(grad, (3, 1)).tolist() == grad.sum(axis=(0, 2)).reshape(3, 1).tolist()
    assert tb.unbroadcast(grad, (4,)).tolist() == grad.sum(axis=(0, 1)).tolist()
    assert tb.unbroadcast(grad, ()).item() == grad.sum()
    assert tb.unbroadcast(grad, (2, 3, 4)) is grad


def test_broadcast_gradient_values():
    a = tb.Node(np.array([[1.0], [2.0]]))     # (2, 1)
    b = tb.Node(np.array([10.0, 20.0, 30.0]))  # (3,)
    (a * b).sum().backward()
    np.testing.assert_array_equal(a.grad, [[60.0], [60.0]])
    np.testing.assert_array_equal(b.grad, [3.0, 3.0, 3.0])


def test_pow_with_node_exponent_at_nonpositive_base():
    base = tb.Node(np.array([2.0, 0.0, -2.0]))
    exponent = tb.Node(np.array([2.0, 2.0, 2.0]))
    (base ** exponent).backward(np.ones(3))
    np.testing.assert_allclose(exponent.grad[0], 4 * np.log(2.0))
    assert exponent.grad[1] == 0.0          # limit of 0**p * log(0) for p > 0
    assert np.isnan(exponent.grad[2])        # not smooth in p for a negative base
    np.testing.assert_allclose(base.grad, [4.0, 0.0, -4.0])


def test_reduction_axis_errors_name_the_argument():
    x = tb.Node(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"axis: expected values in \[-2, 2\).*got 2"):
        x.sum(axis=2)
    with pytest.raises(ValueError, match="repeated axis"):
        x.mean(axis=(0, -2))
    with pytest.raises(ValueError, match="reshape: shape"):
        x.reshape(4)


def test_power_zero_has_gradient_zero_everywhere():
    # x ** 0 is the constant 1, also at x = 0 (0 ** -1 = inf must not leak in as NaN).
    x = tb.Node(np.array([0.0, 2.0, -3.0]))
    with np.errstate(divide="ignore"):
        (x ** 0).backward(np.ones(3))
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])
    base, exponent = tb.Node(np.array([0.0, 0.0, 2.0])), tb.Node(np.array([0.0, 1.0, 0.0]))
    (base ** exponent).backward(np.ones(3))
    np.testing.assert_array_equal(base.grad, [0.0, 1.0, 0.0])  # as PyTorch: 0 where p == 0
    np.testing.assert_array_equal(exponent.grad, [0.0, 0.0, np.log(2.0)])


def test_relu_at_infinities():
    x = tb.Node(np.array([-np.inf, -1.0, 0.0, 2.0, np.inf]))
    out = x.relu()
    np.testing.assert_array_equal(out.data, [0.0, 0.0, 0.0, 2.0, np.inf])
    out.backward(np.full(5, np.inf))  # an inactive unit passes nothing back, even inf
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0, np.inf, np.inf])
    assert np.isnan(tb.relu(tb.Node(np.array([np.nan]))).data[0])


@pytest.mark.parametrize("axes,error", [
    ((0, 5, 1), ValueError), ((0, 0, 1), ValueError), ((0, 1), ValueError),
    ((True, 0, 1), TypeError), ((0.0, 1, 2), TypeError), ((0, 1, -4), ValueError),
])
def test_transpose_rejects_what_is_not_a_permutation(axes, error):
    x = tb.Node(np.ones((2, 3, 4)))
    with pytest.raises(error, match="axes: expected"):
        x.transpose(axes)


def test_transpose_accepts_negative_axes():
    x = tb.Node(np.arange(24.0).reshape(2, 3, 4))
    out = x.transpose(-1, 0, 1)
    assert out.shape == (4, 2, 3)
    out.backward(np.ones((4, 2, 3)))
    assert x.grad.shape == (2, 3, 4)


@pytest.mark.parametrize("axis,error,message", [
    (1.0, TypeError, "axis: expected int or tuple of ints, got 1.0"),
    ((), ValueError, r"axis: expected at least one axis to normalize over, got \(\)"),
    ((0, 1.5), TypeError, "axis: expected int or tuple of ints"),
])
def test_norm_axis_errors_name_axis(axis, error, message):
    x = np.ones((4, 3))
    for norm in (tb.batchnorm_staged, tb.batchnorm_fused):
        with pytest.raises(error, match=message):
            norm(x, np.ones(3), np.zeros(3), axis=axis)


def test_the_vjp_helpers_give_arrays_for_arrays_and_record_ops_on_nodes():
    x = tb.Node(np.array([1.0, -2.0], dtype=np.float32))
    picked = tb.where(np.array([True, False]), 0.5, x)
    assert picked.op == "where" and picked.parents[1] is x  # the operands in their order
    assert picked.parents[0].dtype == np.float32  # the number takes the Node's dtype
    np.testing.assert_array_equal(picked.data, np.array([0.5, -2.0], np.float32))
    assert type(tb.where([True, False], [1, 2], [3, 4])) is np.ndarray
    spread = tb.ops.broadcast_to(x, (3, 2))
    assert spread.op == "broadcast_to" and spread.parents == (x,) and spread.shape == (3, 2)
    assert type(tb.ops.broadcast_to(x.data, (3, 2))) is np.ndarray
    assert tb.ops.log_of(x * x).op == "log" and tb.ops.exp_of(x).op == "exp"
    assert tb.ops.value(x) is x.data and tb.ops.value(x.data) is x.data


def test_number_constants_are_immutable():
    x = tb.Node(np.ones(2))
    half = (x * 0.5).parents[1]
    other_graph = x * 0.5
    assert other_graph.parents[1] is half  # one Constant per number and dtype ...
    with pytest.raises(AttributeError, match="name: a Constant cannot be renamed"):
        half.named("half")  # ... which is why it cannot be renamed
    with pytest.raises(AttributeError, match="a Constant cannot be changed"):
        half.data = np.float64(3.0)
    with pytest.raises(AttributeError, match="a Constant cannot be changed"):
        half.requires_grad = True
    assert half.name is None and half.data == 0.5 and not half.requires_grad
    array_constant = tb.Constant(np.arange(3.0))
    with pytest.raises(ValueError, match="read-only"):
        array_constant.data[0] = 5.0
    with pytest.raises(TypeError):
        x.params["p"] = 1  # an op node's parameters are read-only too

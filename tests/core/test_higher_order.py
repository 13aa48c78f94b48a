"""Higher-order gradients: `tb.grad(..., create_graph=True)` against PyTorch's double backward
and against central differences of the first-order gradient."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - PyTorch's own convention
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes
from index_shape_cases import CASES as INDEX_SHAPE_CASES

import tinygrad_bn as tb
import viz
from tinygrad_bn.core.ops import OPS

SMALL = dict(min_dims=0, max_dims=3, min_side=1, max_side=3)


def values(rng, shape, domain):
    if domain == "positive":
        return rng.uniform(0.5, 2.0, size=shape)
    if domain in ("nonzero", "kinked_at_zero"):
        return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 2.0, size=shape)
    return rng.uniform(-2.0, 2.0, size=shape)


def binary(tb_fn, torch_fn, domains=("real", "real")):
    @st.composite
    def case(draw):
        shapes = draw(mutually_broadcastable_shapes(num_shapes=2, **SMALL)).input_shapes
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return tb_fn, torch_fn, [values(rng, s, d) for s, d in zip(shapes, domains)]
    return case()


def unary(tb_fn, torch_fn, domain="real", min_dims=0):
    @st.composite
    def case(draw):
        shape = draw(array_shapes(**{**SMALL, "min_dims": min_dims}))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return tb_fn, torch_fn, [values(rng, shape, domain)]
    return case()


@st.composite
def reduction(draw, name):
    shape = draw(array_shapes(**SMALL))
    axes = draw(st.lists(st.integers(0, max(len(shape) - 1, 0)), unique=True,
                         max_size=len(shape)).map(tuple)) if shape else ()
    keepdims = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    axis = axes or None
    torch_dims = axes or tuple(range(len(shape)))

    def tb_fn(a):
        return getattr(a, name)(axis=axis, keepdims=keepdims)

    def torch_fn(a):
        if not torch_dims:
            return a
        return getattr(torch, name)(a, dim=torch_dims, keepdim=keepdims)

    return tb_fn, torch_fn, [rng.uniform(-2, 2, shape)]


@st.composite
def matmul(draw):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    kind = draw(st.sampled_from(["mm", "vm", "mv", "vv", "batched", "broadcast"]))
    a_shape, b_shape = {"mm": ((n, k), (k, m)), "vm": ((k,), (k, m)), "mv": ((n, k), (k,)),
                        "vv": ((k,), (k,)), "batched": ((2, n, k), (2, k, m)),
                        "broadcast": ((3, n, k), (k, m))}[kind]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (lambda a, b: a @ b), (lambda a, b: a @ b), [rng.uniform(-2, 2, a_shape),
                                                        rng.uniform(-2, 2, b_shape)]


@st.composite
def where(draw):
    shapes = draw(mutually_broadcastable_shapes(num_shapes=3, **SMALL)).input_shapes
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    condition = rng.random(shapes[2]) > 0.5
    return ((lambda a, b: tb.where(condition, a, b)),
            (lambda a, b: torch.where(torch.tensor(condition), a, b)),
            [rng.uniform(-2, 2, shapes[0]), rng.uniform(-2, 2, shapes[1])])


@st.composite
def shape_op(draw, kind):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = [rng.uniform(-2, 2, shape)]
    if kind == "reshape":
        return (lambda a: a.reshape(-1, 1)), (lambda a: a.reshape(-1, 1)), arrays
    if kind == "transpose":
        axes = draw(st.permutations(range(len(shape))).map(tuple))
        return (lambda a: a.transpose(axes)), (lambda a: a.permute(axes)), arrays
    target = (2, *shape)  # broadcast_to
    return ((lambda a: tb.ops.broadcast_to(a, target)), (lambda a: a.expand(target)), arrays)


@st.composite
def pow_const(draw):
    shape = draw(array_shapes(**SMALL))
    p = draw(st.sampled_from([2.0, 3.0, 0.5, -1.0, 1.7]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (lambda a: a ** p), (lambda a: a ** p), [values(rng, shape, "positive")]


CASES = {
    "Add": binary(lambda a, b: a + b, lambda a, b: a + b),
    "Sub": binary(lambda a, b: a - b, lambda a, b: a - b),
    "Mul": binary(lambda a, b: a * b, lambda a, b: a * b),
    "Div": binary(lambda a, b: a / b, lambda a, b: a / b, ("real", "nonzero")),
    "Pow": binary(lambda a, b: a ** b, lambda a, b: a ** b, ("positive", "real")),
    "PowConst": pow_const(),
    "MatMul": matmul(),
    "Where": where(),
    "Identity": unary(tb.identity, lambda a: a * 1),
    "Neg": unary(lambda a: -a, lambda a: -a),
    "Sqrt": unary(tb.sqrt, torch.sqrt, "positive"),
    "Exp": unary(tb.exp, torch.exp),
    "Log": unary(tb.log, torch.log, "positive"),
    "Relu": unary(tb.relu, torch.relu, "kinked_at_zero"),
    "Tanh": unary(tb.tanh, torch.tanh),
    "Cast": unary(lambda a: a.astype(np.float64), lambda a: a.double()),
    "Sum": reduction("sum"),
    "Mean": reduction("mean"),
    "Reshape": shape_op("reshape"),
    "Transpose": shape_op("transpose"),
    "BroadcastTo": shape_op("broadcast_to"),
    **INDEX_SHAPE_CASES,
}


def hvp_engine(fn, arrays, weight, directions):
    """H v of sum(weight * fn(inputs)) with respect to all inputs, by double backward."""
    nodes = [tb.Node(a) for a in arrays]
    loss = (fn(*nodes) * tb.Node(weight, requires_grad=False)).sum()
    grads = tb.grad(loss, nodes, create_graph=True)
    inner = sum((g * tb.Node(v, requires_grad=False)).sum() for g, v in zip(grads, directions))
    return tb.grad(inner, nodes)


def hvp_torch(fn, arrays, weight, directions):
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    loss = (fn(*tensors) * torch.tensor(weight)).sum()
    grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
    inner = sum((g * torch.tensor(v)).sum() for g, v in zip(grads, directions) if g is not None)
    if not torch.is_tensor(inner) or not inner.requires_grad:
        return [np.zeros_like(a) for a in arrays]
    second = torch.autograd.grad(inner, tensors, allow_unused=True)
    return [np.zeros_like(a) if s is None else s.detach().numpy() for a, s in zip(arrays, second)]


def first_order(fn, arrays, weight):
    nodes = [tb.Node(a) for a in arrays]
    return tb.grad((fn(*nodes) * tb.Node(weight, requires_grad=False)).sum(), nodes)


def hvp_central(fn, arrays, weight, directions, h=1e-5):
    """(g(x + h v) - g(x - h v)) / 2h: central differences of the first-order gradient."""
    plus = first_order(fn, [a + h * v for a, v in zip(arrays, directions)], weight)
    minus = first_order(fn, [a - h * v for a, v in zip(arrays, directions)], weight)
    return [(p - m) / (2 * h) for p, m in zip(plus, minus)]


def test_every_primitive_has_a_second_order_case():
    assert set(CASES) == set(OPS)


@pytest.mark.parametrize("op_name", sorted(OPS))
def test_hessian_vector_products_match_torch_and_central_differences(op_name):
    @settings(max_examples=20, deadline=None, derandomize=True)
    @given(case=CASES[op_name], seed=st.integers(0, 2**32 - 1))
    def check(case, seed):
        fn, torch_fn, arrays = case
        rng = np.random.default_rng(seed)
        out_shape = np.shape(fn(*[tb.Node(a) for a in arrays]).data)
        weight = rng.uniform(-1, 1, out_shape)
        directions = [rng.uniform(-1, 1, np.shape(a)) for a in arrays]
        ours = hvp_engine(fn, arrays, weight, directions)
        theirs = hvp_torch(torch_fn, arrays, weight, directions)
        central = hvp_central(fn, arrays, weight, directions)
        for a, o, t, c in zip(arrays, ours, theirs, central):
            assert np.shape(o) == np.shape(a)
            np.testing.assert_allclose(o, t, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(o, c, rtol=1e-5, atol=1e-6)

    check()


def test_third_derivatives_are_the_analytic_ones():
    x = tb.Node(np.array([-1.3, 0.2, 0.9]))
    (d1,) = tb.grad(x.tanh().sum(), [x], create_graph=True)
    (d2,) = tb.grad(d1.sum(), [x], create_graph=True)
    (d3,) = tb.grad(d2.sum(), [x])
    t = np.tanh(x.data)
    np.testing.assert_allclose(d1.data, 1 - t**2, rtol=1e-14)
    np.testing.assert_allclose(d2.data, -2 * t * (1 - t**2), rtol=1e-14)
    np.testing.assert_allclose(d3, -2 * (1 - t**2) * (1 - 3 * t**2), rtol=1e-13)
    y = tb.Node(np.array([0.5, 2.0]))
    (g,) = tb.grad(y.log().sum(), [y], create_graph=True)
    (g,) = tb.grad(g.sum(), [y], create_graph=True)
    (g,) = tb.grad(g.sum(), [y])
    np.testing.assert_allclose(g, 2 / y.data**3, rtol=1e-14)


NORM_CASES = [("batch", (6, 4), None), ("spatial", (3, 2, 3, 2), None), ("layer", (3, 5), None),
              ("group", (2, 4, 2, 3), 2)]


def norm_hvp(kind, build, x, gamma, beta, weight, directions, groups):
    nodes = [tb.Node(x), tb.Node(gamma), tb.Node(beta)]
    out = build(kind, *nodes, groups=groups)
    loss = (out * tb.Node(weight, requires_grad=False)).sum()
    grads = tb.grad(loss, nodes, create_graph=True)
    inner = sum((g * tb.Node(v, requires_grad=False)).sum() for g, v in zip(grads, directions))
    return [g.data for g in grads], tb.grad(inner, nodes)


def torch_norm(kind, x, gamma, beta, groups):
    if kind in ("batch", "spatial"):
        return F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)
    if kind == "layer":
        return F.layer_norm(x, x.shape[1:], gamma, beta, eps=1e-5)
    return F.group_norm(x, groups, gamma, beta, eps=1e-5)


@pytest.mark.parametrize("kind,shape,groups", NORM_CASES)
def test_second_order_norms_staged_fused_and_torch(kind, shape, groups):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    param_shape = shape[1:] if kind == "layer" else (shape[1],)
    gamma, beta = rng.standard_normal(param_shape), rng.standard_normal(param_shape)
    weight = rng.standard_normal(shape)
    directions = [rng.standard_normal(shape), rng.standard_normal(param_shape),
                  rng.standard_normal(param_shape)]
    first_s, staged = norm_hvp(kind, tb.norm_staged, x, gamma, beta, weight, directions, groups)
    first_f, fused = norm_hvp(kind, tb.norm_fused, x, gamma, beta, weight, directions, groups)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, gamma, beta)]
    loss = (torch_norm(kind, *tensors, groups) * torch.tensor(weight)).sum()
    first_t = torch.autograd.grad(loss, tensors, create_graph=True)
    inner = sum((g * torch.tensor(v)).sum() for g, v in zip(first_t, directions))
    second_t = torch.autograd.grad(inner, tensors, allow_unused=True)
    for s, f, t, a in zip(staged, fused, second_t, (x, gamma, beta)):
        t = np.zeros_like(a) if t is None else t.numpy()
        assert tb.scaled_error(s, f) < 1e-10
        assert tb.scaled_error(f, t) < 1e-8
    for s, f, t in zip(first_s, first_f, first_t):
        assert tb.scaled_error(s, f) < 1e-10 and tb.scaled_error(f, t.detach().numpy()) < 1e-8


def test_grad_leaves_every_grad_alone_and_gives_zeros_for_unused_inputs():
    x, unused = tb.Node(np.array([1.0, 2.0]), name="x"), tb.Node(np.ones((2, 2)))
    y = (x * x).sum()
    y.backward()
    before = x.grad.copy()
    dx, dunused = tb.grad(y, [x, unused])
    np.testing.assert_array_equal(dx, 2 * x.data)
    np.testing.assert_array_equal(dunused, np.zeros((2, 2)))
    np.testing.assert_array_equal(x.grad, before)
    assert y.grad is not None and unused.grad is None
    dx_node, dunused_node = tb.grad(y, [x, unused], create_graph=True)
    assert isinstance(dx_node, tb.Node) and dx_node.name == "dx"
    assert isinstance(dunused_node, tb.Node) and not dunused_node.data.any()
    np.testing.assert_array_equal(x.grad, before)


def test_grad_errors_name_the_argument():
    x = tb.Node(np.ones(3))
    y = x * 2
    with pytest.raises(ValueError, match=r"has shape \(3,\), so pass an upstream"):
        tb.grad(y, [x])
    with pytest.raises(ValueError, match=r"grad must have the node's shape \(3,\), got shape \(2,\)"):
        tb.grad(y, [x], np.ones(2))
    with pytest.raises(TypeError, match=r"inputs\[1\]: expected a Node, got ndarray"):
        tb.grad(y.sum(), [x, np.ones(3)])
    with pytest.raises(TypeError, match="output: expected a Node, got float"):
        tb.grad(1.0, [x])
    assert x.grad is None


def test_the_backward_graph_is_named_and_drawn():
    rng = np.random.default_rng(0)
    x = tb.Node(rng.standard_normal((6, 4)), name="x")
    gamma, beta = tb.Node(np.ones(4), name="gamma"), tb.Node(np.zeros(4), name="beta")
    out = tb.batchnorm_staged(x, gamma, beta)
    grads = tb.grad(out, [x, gamma, beta], rng.standard_normal((6, 4)), create_graph=True)
    expected = {"dout", "dgammax", "dxhat", "divar", "dsqrtvar", "dvar_eps", "dvar", "dsq",
                "dxmu", "dmu", "dx", "dgamma", "dbeta"}
    assert [g.name for g in grads] == ["dx", "dgamma", "dbeta"]
    named = {n.name for g in grads for n in tb.graph_nodes(g) if n.name}
    assert expected <= named
    svg = viz.draw_backward(grads, out).svg()
    for name in expected:  # a gradient that is another's shares its title: "dvar_eps = dvar"
        assert re.search(rf">({name} = \S+|\S+ = {name}|{name}): ", svg), name
    # Forward values the backward reads are drawn as inputs, without their own graph.
    assert ">xmu: forward sub<" in svg and ">ivar: forward div<" in svg
    assert ">mu: forward mean<" not in svg


def test_hessian_vector_product_of_the_fused_norm_example():
    rng = np.random.default_rng(1)
    x = tb.Node(rng.standard_normal((6, 4)), name="x")
    gamma, beta = tb.Node(np.ones(4), name="gamma"), tb.Node(np.zeros(4), name="beta")
    w = tb.Node(rng.standard_normal((6, 4)), requires_grad=False)
    loss = (tb.batchnorm_fused(x, gamma, beta) * w).sum()
    dx, dgamma = tb.grad(loss, [x, gamma], create_graph=True)
    v = rng.standard_normal((6, 4))
    (hv,) = tb.grad((dx * tb.Node(v, requires_grad=False)).sum(), [x])
    central = hvp_central(lambda a: tb.batchnorm_fused(a, gamma.data, beta.data), [x.data],
                          w.data, [v])[0]
    assert tb.scaled_error(hv, central) < 1e-7

"""The assignment's other layers staged: each against PyTorch (values, first and second
order), central differences, and the assignment's closed-form backward where it has one.
The random-geometry searches run 25 cases each; TINYGRAD_BN_LONG_SEARCH=500 runs a longer one."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - PyTorch's own convention
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tinygrad_bn as tb
from tinygrad_bn import layers


def rng_for(seed=0):
    return np.random.default_rng(seed)


def conv_case(rng, n=2, c=3, h=7, w=6, f=4, hh=3, ww=2):
    return rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, hh, ww)), rng.standard_normal(f)


# Each: the staged function of Nodes -> output node, PyTorch's, the inputs.
def cases():
    rng = rng_for(1)
    labels = rng.integers(0, 5, size=6)
    mask = (rng.random((4, 5)) < 0.6) / 0.6
    conv_inputs = conv_case(rng)
    conv_strided = conv_case(rng, h=7, w=9, hh=3, ww=3)
    return {
        "affine": (lambda x, w, b: layers.affine_staged(x, w, b)["out"],
                   lambda x, w, b: F.linear(x.reshape(x.shape[0], -1), w.T, b),
                   [rng.standard_normal((4, 2, 3)), rng.standard_normal((6, 5)), rng.standard_normal(5)]),
        "relu": (lambda x: layers.relu_staged(x)["out"], F.relu,
                 [rng.choice([-1, 1], (4, 5)) * rng.uniform(0.5, 2, (4, 5))]),
        "dropout": (lambda x: layers.dropout_staged(x, mask)["out"],
                    lambda x: x * torch.tensor(mask), [rng.standard_normal((4, 5))]),
        "conv": (lambda x, w, b: layers.conv_staged(x, w, b, stride=1, padding=1)["out"],
                 lambda x, w, b: F.conv2d(x, w, b, stride=1, padding=1), list(conv_inputs)),
        "conv_strided": (lambda x, w, b: layers.conv_staged(x, w, b, stride=2, padding=0)["out"],
                         lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=0), list(conv_strided)),
        "max_pool": (lambda x: layers.max_pool_staged(x, 2, 2, 2)["out"],
                     lambda x: F.max_pool2d(x, 2, 2),
                     [rng.permutation(2 * 3 * 4 * 6).reshape(2, 3, 4, 6) * 0.1]),
        "max_pool_overlapping": (lambda x: layers.max_pool_staged(x, 3, 2, 1)["out"],
                                 lambda x: F.max_pool2d(x, (3, 2), 1),
                                 [rng.permutation(2 * 2 * 5 * 4).reshape(2, 2, 5, 4) * 0.1]),
        "svm": (lambda x: layers.svm_staged(x, labels)["loss"],
                lambda x: 5 * F.multi_margin_loss(x, torch.tensor(labels)),
                [rng.standard_normal((6, 5))]),
        "softmax": (lambda x: layers.softmax_staged(x, labels)["loss"],
                    lambda x: F.cross_entropy(x, torch.tensor(labels)), [rng.standard_normal((6, 5))]),
    }


CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients_match_pytorch(name):
    ours, theirs, arrays = CASES[name]
    nodes = [tb.Node(a) for a in arrays]
    out = ours(*nodes)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = theirs(*tensors)
    np.testing.assert_allclose(out.data, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    upstream = rng_for(2).standard_normal(out.shape)
    out.backward(upstream)
    expected.backward(torch.tensor(upstream))
    for node, tensor in zip(nodes, tensors):
        np.testing.assert_allclose(node.grad, tensor.grad.numpy(), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_central_differences(name):
    ours, _, arrays = CASES[name]
    result = tb.gradcheck(ours, *arrays, tol=1e-7, normwise=True)
    assert result.ok, str(result)


# (PyTorch has no double backward for multi_margin_loss; the svm loss is piecewise linear.)
@pytest.mark.parametrize("name", ["affine", "conv_strided", "max_pool", "softmax"])
def test_hessian_vector_products_match_pytorch(name):
    ours, theirs, arrays = CASES[name]
    rng = rng_for(3)
    nodes = [tb.Node(a) for a in arrays]
    out = ours(*nodes)
    weight = rng.standard_normal(out.shape)
    directions = [rng.standard_normal(a.shape) for a in arrays]
    loss = (out * tb.Node(weight, requires_grad=False)).sum()
    grads = tb.grad(loss, nodes, create_graph=True)
    inner = sum((g * tb.Node(v, requires_grad=False)).sum() for g, v in zip(grads, directions))
    second = tb.grad(inner, nodes)
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    t_loss = (theirs(*tensors) * torch.tensor(weight)).sum()
    t_grads = torch.autograd.grad(t_loss, tensors, create_graph=True)
    t_inner = sum((g * torch.tensor(v)).sum() for g, v in zip(t_grads, directions))
    t_second = torch.autograd.grad(t_inner, tensors, allow_unused=True) if t_inner.requires_grad \
        else [None] * len(tensors)
    for ours_hv, theirs_hv, a in zip(second, t_second, arrays):
        theirs_hv = np.zeros_like(a) if theirs_hv is None else theirs_hv.numpy()
        np.testing.assert_allclose(ours_hv, theirs_hv, rtol=1e-10, atol=1e-12)


def test_closed_forms_equal_the_staged_backward():
    rng = rng_for(4)
    x, w, b = rng.standard_normal((5, 2, 3)), rng.standard_normal((6, 4)), rng.standard_normal(4)
    dout = rng.standard_normal((5, 4))
    nodes = [tb.Node(v) for v in (x, w, b)]
    layers.affine_staged(*nodes)["out"].backward(dout)
    for staged, closed in zip(nodes, layers.affine_closed_form_backward(dout, x, w)):
        np.testing.assert_allclose(staged.grad, closed, rtol=1e-13)
    scores, labels = rng.standard_normal((7, 4)), rng.integers(0, 4, 7)
    for staged_fn, closed_fn in [(layers.svm_staged, layers.svm_closed_form),
                                 (layers.softmax_staged, layers.softmax_closed_form)]:
        node = tb.Node(scores)
        loss = staged_fn(node, labels)["loss"]
        loss.backward()
        closed_loss, closed_dx = closed_fn(scores, labels)
        np.testing.assert_allclose(loss.data, closed_loss, rtol=1e-14)
        np.testing.assert_allclose(node.grad, closed_dx, rtol=1e-12, atol=1e-15)
    x = rng.standard_normal((3, 4))
    node = tb.Node(x)
    layers.relu_staged(node)["out"].backward(dout[:3])
    np.testing.assert_array_equal(node.grad, layers.relu_closed_form_backward(dout[:3], x))
    mask = (rng.random((3, 4)) < 0.5) / 0.5
    node = tb.Node(x)
    layers.dropout_staged(node, mask)["out"].backward(dout[:3])
    np.testing.assert_array_equal(node.grad, layers.dropout_closed_form_backward(dout[:3], mask))


def test_stages_are_named_nodes_of_the_diagram():
    rng = rng_for(5)
    x, w, b = conv_case(rng)
    built = {
        layers.AFFINE_STAGES: layers.affine_staged(x.reshape(2, -1), rng.standard_normal((126, 3)),
                                                   np.zeros(3)),
        layers.CONV_STAGES: layers.conv_staged(x, w, b, stride=1, padding=1),
        layers.POOL_STAGES: layers.max_pool_staged(x[:, :, :6], 2, 2, 2),
        layers.SVM_STAGES: layers.svm_staged(x[:, 0, 0], [0, 1]),
        layers.SOFTMAX_STAGES: layers.softmax_staged(x[:, 0, 0], [0, 1]),
    }
    for names, nodes in built.items():
        assert tuple(nodes) == names
        assert all(node.name == name for name, node in nodes.items())
    windows = built[layers.CONV_STAGES]["windows"]
    assert windows.shape == (2, 3, 7, 7, 3, 2) and windows.op == "sliding_window"


def test_max_pool_ties_share_the_window_gradient():
    x = tb.Node(np.ones((1, 1, 2, 2)))
    layers.max_pool_staged(x, 2, 2, 2)["out"].backward(np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(x.grad, np.full((1, 1, 2, 2), 0.25))


@pytest.mark.parametrize("call,error,message", [
    (lambda: layers.softmax_staged(np.zeros((3, 4)), [0, 1, 4]), ValueError,
     r"y: expected labels in \[0, 4\) for x with 4 classes, got values from 0 to 4"),
    (lambda: layers.svm_staged(np.zeros((3, 4)), [0, 1]), ValueError, r"y: expected shape \(3,\)"),
    (lambda: layers.svm_staged(np.zeros((3, 4)), [0.5, 1, 2]), TypeError, "y: expected integer class labels"),
    (lambda: layers.conv_staged(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 5, 5)), np.zeros(1)), ValueError,
     "w: a window of 5 does not fit an input of 4"),
    (lambda: layers.conv_staged(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), np.zeros(1), stride=2),
     ValueError, "stride: expected a stride that divides 1"),
    (lambda: layers.conv_staged(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), np.zeros(1), padding=-1),
     ValueError, "pad: expected a non-negative int, got -1"),
    (lambda: layers.conv_staged(np.zeros((1, 2, 4, 4)), np.zeros((1, 1, 3, 3)), np.zeros(1)), ValueError,
     "w: expected 2 channels"),
    (lambda: layers.max_pool_staged(np.zeros((1, 1, 4, 4)), 5, 2, 1), ValueError,
     "pool_height: a window of 5 does not fit an input of 4"),
    (lambda: layers.max_pool_staged(np.zeros((1, 1, 5, 5)), 2, 2, 2), ValueError,
     "stride: expected a stride that divides 3"),
    (lambda: layers.max_pool_staged(np.zeros((4, 4)), 2, 2, 2), ValueError,
     r"x: expected shape \(N, C, H, W\)"),
    (lambda: layers.affine_staged(np.zeros((2, 3)), np.zeros((4, 2)), np.zeros(2)), ValueError,
     r"w: expected shape \(3, M\)"),
    (lambda: layers.dropout_staged(np.zeros((2, 3)), np.zeros(3)), ValueError, r"mask: expected x's shape"),
])
def test_bad_arguments_get_one_line_errors_naming_them(call, error, message):
    with pytest.raises(error, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)


@st.composite
def conv_geometry(draw):
    n, c, f = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad, stride = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    hh, ww = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    out_h, out_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    height = max((out_h - 1) * stride + hh - 2 * pad, 1)
    width = max((out_w - 1) * stride + ww - 2 * pad, 1)
    assume((height + 2 * pad - hh) % stride == 0 and (width + 2 * pad - ww) % stride == 0)
    assume(height + 2 * pad >= hh and width + 2 * pad >= ww)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = scale * rng.standard_normal((n, c, height, width))
    if draw(st.booleans()):  # a non-contiguous input: the transpose of a contiguous one
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    return x, rng.standard_normal((f, c, hh, ww)), rng.standard_normal(f), stride, pad


@settings(max_examples=int(os.environ.get("TINYGRAD_BN_LONG_SEARCH", "25")), deadline=None)
@given(case=conv_geometry())
def test_conv_matches_pytorch_on_random_geometries(case):
    x, w, b, stride, pad = case
    nodes = [tb.Node(a) for a in (x, w, b)]
    out = layers.conv_staged(*nodes, stride=stride, padding=pad)["out"]
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    expected = F.conv2d(*tensors, stride=stride, padding=pad)
    assert tb.scaled_error(out.data, expected.detach().numpy()) < 1e-13
    upstream = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(upstream)
    expected.backward(torch.tensor(upstream))
    for node, tensor in zip(nodes, tensors):
        assert tb.scaled_error(node.grad, tensor.grad.numpy()) < 1e-13


@settings(max_examples=int(os.environ.get("TINYGRAD_BN_LONG_SEARCH", "25")), deadline=None)
@given(size=st.tuples(st.integers(1, 3), st.integers(1, 3)), stride=st.integers(1, 3),
       out_hw=st.tuples(st.integers(1, 3), st.integers(1, 3)), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_max_pool_matches_pytorch_on_random_geometries(size, stride, out_hw, seed, dtype):
    rng = np.random.default_rng(seed)
    shape = (2, 2, *((o - 1) * stride + k for o, k in zip(out_hw, size)))
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(dtype) * dtype(0.25)  # no ties
    node = tb.Node(x)
    out = layers.max_pool_staged(node, *size, stride)["out"]
    tensor = torch.tensor(x, requires_grad=True)
    expected = F.max_pool2d(tensor, size, stride)
    np.testing.assert_array_equal(out.data, expected.detach().numpy())
    upstream = rng.standard_normal(out.shape).astype(dtype)
    out.backward(upstream)
    expected.backward(torch.tensor(upstream))
    assert node.grad.dtype == dtype
    # (overlapping windows' gradients add in another order than PyTorch's)
    np.testing.assert_allclose(node.grad, tensor.grad.numpy(), rtol=1e-6 if dtype == np.float32 else 1e-14)


@settings(max_examples=int(os.environ.get("TINYGRAD_BN_LONG_SEARCH", "25")), deadline=None)
@given(case=conv_geometry(), dtype=st.sampled_from([np.float32, np.float64]))
def test_conv_is_as_exact_as_its_sums_allow(case, dtype):
    """Against a long-double reference: each output within K * eps of the sum of |x * w|
    over its window (K products per output), in float32 and float64."""
    x, w, b, stride, pad = case
    out = layers.conv_staged(x.astype(dtype), w.astype(dtype), b.astype(dtype), stride=stride,
                             padding=pad)["out"].data
    assert out.dtype == dtype
    exact_x, exact_w = (v.astype(dtype).astype(np.longdouble) for v in (x, w))
    xpad = np.pad(exact_x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(xpad, w.shape[2:], axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]
    bias = b.astype(dtype).astype(np.longdouble).reshape(1, -1, 1, 1)
    reference = np.einsum("nchwij,fcij->nfhw", windows, exact_w) + bias
    magnitude = np.einsum("nchwij,fcij->nfhw", np.abs(windows), np.abs(exact_w)) + np.abs(bias)
    products = w[0].size
    bound = (products + 2) * np.finfo(dtype).eps * magnitude
    assert np.all(np.abs(out - reference) <= bound + np.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0.0, 1e4, -3e4])
def test_softmax_loss_is_stable_far_from_zero(dtype, offset):
    """Scores far from 0 (exp would overflow unshifted): the loss and dx against long double."""
    rng = np.random.default_rng(int(abs(offset)))
    scores = (offset + 5 * rng.standard_normal((8, 6))).astype(dtype)
    labels = rng.integers(0, 6, 8)
    node = tb.Node(scores)
    loss = layers.softmax_staged(node, labels)["loss"]
    loss.backward()
    exact = scores.astype(np.longdouble)
    shifted = exact - exact.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -log_probs[np.arange(8), labels].mean()
    expected_dx = np.exp(log_probs)
    expected_dx[np.arange(8), labels] -= 1
    eps = np.finfo(dtype).eps
    assert abs(float(loss.data) - float(expected_loss)) <= 32 * eps * max(1.0, float(expected_loss))
    assert np.max(np.abs(node.grad - (expected_dx / 8).astype(np.float64))) <= 32 * eps / 8

"""The CS231n drop-in functions, checked the way the assignment's notebook checks them."""

import numpy as np
import pytest
from numeric import eval_numerical_gradient_array

import tinygrad_bn as tb
from tinygrad_bn import rel_error
from tinygrad_bn.cs231n import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    layernorm_backward,
    layernorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)


def test_notebook_gradient_check():
    np.random.seed(231)
    N, D = 4, 5
    x = 5 * np.random.randn(N, D) + 12
    gamma = np.random.randn(D)
    beta = np.random.randn(D)
    dout = np.random.randn(N, D)
    bn_param = {"mode": "train"}
    fx = lambda x: batchnorm_forward(x, gamma, beta, bn_param)[0]  # noqa: E731
    fg = lambda a: batchnorm_forward(x, a, beta, bn_param)[0]  # noqa: E731
    fb = lambda b: batchnorm_forward(x, gamma, b, bn_param)[0]  # noqa: E731
    dx_num = eval_numerical_gradient_array(fx, x, dout)
    da_num = eval_numerical_gradient_array(fg, gamma.copy(), dout)
    db_num = eval_numerical_gradient_array(fb, beta.copy(), dout)
    _, cache = batchnorm_forward(x, gamma, beta, bn_param)
    for backward in (batchnorm_backward, batchnorm_backward_alt):
        dx, dgamma, dbeta = backward(dout, cache)
        assert rel_error(dx_num, dx) < 1e-8
        assert rel_error(da_num, dgamma) < 1e-10
        assert rel_error(db_num, dbeta) < 1e-10
    # Calling the staged backward twice on one cache gives the same, not doubled, result.
    again = batchnorm_backward(dout, cache)
    assert rel_error(again[0], batchnorm_backward(dout, cache)[0]) == 0


def test_staged_and_alt_agree_at_a_larger_batch():
    rng = np.random.default_rng(0)
    x = 5 * rng.standard_normal((200, 50)) + 12
    gamma, beta, dout = rng.standard_normal(50), rng.standard_normal(50), rng.standard_normal((200, 50))
    _, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    staged = batchnorm_backward(dout, cache)
    alt = batchnorm_backward_alt(dout, cache)
    for a, b in zip(staged, alt):
        assert np.max(np.abs(a - b)) / np.max(np.abs(a) + np.abs(b)) < 1e-12
    assert cache.stages["xmu"].grad.shape == (200, 50)


def test_bn_param_semantics():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    bn_param = {"mode": "train"}
    batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), bn_param)
    assert bn_param["running_mean"].dtype == np.float32
    np.testing.assert_allclose(bn_param["running_mean"], 0.1 * x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn_param["running_var"], 0.1 * x.var(axis=0), rtol=1e-5)
    out, cache = batchnorm_forward(x, np.ones(3), np.zeros(3), {**bn_param, "mode": "test"})
    expected = (x - bn_param["running_mean"]) / np.sqrt(bn_param["running_var"] + 1e-5)
    assert cache is None
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_bad_bn_param_changes_nothing():
    x = np.ones((4, 3))
    running = {"running_mean": np.full(3, 7.0), "running_var": np.full(3, 2.0)}
    cases = [
        ({"mode": "eval"}, "bn_param\\['mode'\\]: expected 'train' or 'test', got 'eval'"),
        ({"mode": "train", "momentum": -0.1}, "momentum: expected a number in"),
        ({"mode": "train", "eps": 0}, "eps: expected a finite number > 0"),
    ]
    for update, message in cases:
        bn_param = {**running, **update}
        with pytest.raises(ValueError, match=message):
            batchnorm_forward(x, np.ones(3), np.zeros(3), bn_param)
        assert bn_param["running_mean"] is running["running_mean"]
    with pytest.raises(ValueError, match="gamma: expected shape \\(3,\\)"):
        batchnorm_forward(x, np.ones(2), np.zeros(3), {"mode": "train", **running})
    np.testing.assert_array_equal(running["running_mean"], np.full(3, 7.0))
    _, cache = batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match="dout: expected shape \\(4, 3\\)"):
        batchnorm_backward(np.ones((3, 4)), cache)
    with pytest.raises(TypeError, match="cache: expected the cache returned by the matching forward"):
        batchnorm_backward_alt(np.ones((4, 3)), None)


# --- the assignment's functions at the assignment's sizes ---------------------------------
def check_cs231n(forward, backward, x, gamma, beta, dout, tol, dx_tol=None):
    fx = lambda a: forward(a, gamma, beta)[0]  # noqa: E731
    fg = lambda a: forward(x, a, beta)[0]  # noqa: E731
    fb = lambda a: forward(x, gamma, a)[0]  # noqa: E731
    numeric = [eval_numerical_gradient_array(fx, x, dout),
               eval_numerical_gradient_array(fg, gamma.copy(), dout),
               eval_numerical_gradient_array(fb, beta.copy(), dout)]
    _, cache = forward(x, gamma, beta)
    for analytic, expected, limit in zip(backward(dout, cache), numeric, (dx_tol or tol, tol, tol)):
        assert analytic.shape == expected.shape
        assert tb.rel_error(analytic, expected) < limit


def test_cs231n_layernorm():
    np.random.seed(231)
    N, D = 4, 5
    x = 5 * np.random.randn(N, D) + 12
    gamma, beta, dout = np.random.randn(D), np.random.randn(D), np.random.randn(N, D)
    check_cs231n(lambda a, g, b: layernorm_forward(a, g, b, {}), layernorm_backward,
                 x, gamma, beta, dout, 1e-8)
    out, _ = layernorm_forward(x, np.ones(D), np.zeros(D), {"eps": 1e-5})
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-12)


def test_cs231n_spatial_batchnorm():
    np.random.seed(231)
    N, C, H, W = 2, 3, 4, 5
    x = 5 * np.random.randn(N, C, H, W) + 12
    gamma, beta, dout = np.random.randn(C), np.random.randn(C), np.random.randn(N, C, H, W)
    forward = lambda a, g, b: spatial_batchnorm_forward(a, g, b, {"mode": "train"})  # noqa: E731
    # With this seed some dx entries are ~1e-4 of the largest, and the notebook's float64
    # central differences carry ~3e-7 relative error there (for any correct code): the
    # notebook itself expects 1e-12 to 1e-6. Against central differences in extended
    # precision the staged backward is exact to 1e-8 elementwise.
    check_cs231n(forward, spatial_batchnorm_backward, x, gamma, beta, dout, 1e-8, dx_tol=1e-6)
    dx = spatial_batchnorm_backward(dout, forward(x, gamma, beta)[1])[0]
    g, b = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)

    def extended(a):
        xmu = a - a.mean(axis=(0, 2, 3), keepdims=True)
        var = (xmu * xmu).mean(axis=(0, 2, 3), keepdims=True)
        return g * xmu / np.sqrt(var + np.longdouble(1e-5)) + b

    reference = tb.numerical_gradient(extended, x.astype(np.longdouble), dout)
    assert tb.rel_error(dx, reference) < 1e-8
    bn_param = {"mode": "train"}
    spatial_batchnorm_forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(bn_param["running_mean"], 0.1 * x.mean(axis=(0, 2, 3)))
    out, cache = spatial_batchnorm_forward(x, np.ones(C), np.zeros(C), {**bn_param, "mode": "test"})
    assert cache is None and out.shape == x.shape


def test_cs231n_groupnorm():
    np.random.seed(231)
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 5 * np.random.randn(N, C, H, W) + 12
    gamma = np.random.randn(1, C, 1, 1)
    beta = np.random.randn(1, C, 1, 1)
    dout = np.random.randn(N, C, H, W)
    check_cs231n(lambda a, g, b: spatial_groupnorm_forward(a, g, b, G, {}),
                 spatial_groupnorm_backward, x, gamma, beta, dout, 1e-7)
    with pytest.raises(ValueError, match="^G: expected a divisor"):
        spatial_groupnorm_forward(x, gamma, beta, 4, {})

"""The CS231n drop-in functions, checked the way the assignment's notebook checks them."""

import numpy as np
import pytest
from numeric import eval_numerical_gradient_array

from tinygrad_bn import rel_error
from tinygrad_bn.cs231n import batchnorm_backward, batchnorm_backward_alt, batchnorm_forward


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

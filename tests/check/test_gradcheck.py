"""The numeric tools every other check stands on: central differences, the extended-precision
reference, the two error measures, and gradcheck's verdict."""

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.check.gradcheck import reference_gradient


def test_numerical_gradient_of_a_square_and_x_restored_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    before = x.copy()
    upstream = rng.standard_normal((3, 4))
    grad = tb.numerical_gradient(lambda v: v ** 2, x, upstream, h=1e-5)
    # The central difference of v**2 is exact up to rounding: (x+h)^2 - (x-h)^2 = 4xh.
    np.testing.assert_allclose(grad, 2 * before * upstream, rtol=1e-8, atol=1e-10)
    assert np.array_equal(x, before)


def test_numerical_gradient_rejects_what_it_cannot_perturb():
    with pytest.raises(TypeError, match="x: expected a numpy array"):
        tb.numerical_gradient(lambda v: v, [1.0, 2.0], 1.0)
    # A transpose cannot be flattened without a copy, so writes would never reach it.
    transposed = np.arange(12.0).reshape(3, 4).T
    with pytest.raises(ValueError, match="x: expected a contiguous array"):
        tb.numerical_gradient(lambda v: v, transposed, np.ones((4, 3)))


def test_reference_gradient_is_accurate_and_says_how_accurate():
    x = np.linspace(-1.0, 2.0, 7)
    upstream = np.arange(1.0, 8.0)
    grad, error = reference_gradient(np.sin, x, upstream)
    exact = np.cos(x) * upstream
    assert np.max(np.abs(grad - exact)) < 1e-12
    assert np.all(error < 1e-9)
    # Only the coordinates asked for are differentiated; the rest stay NaN.
    some, _ = reference_gradient(np.sin, x, upstream, coordinates=np.array([0, 3]))
    assert np.allclose(some[[0, 3]], exact[[0, 3]], rtol=1e-12)
    assert np.isnan(some[[1, 2, 4, 5, 6]]).all()


def test_error_measures():
    a = np.array([1.0, 1e-9, -2.0])
    b = np.array([1.0 + 1e-6, 2e-9, -2.0])
    # Elementwise: the tiny entry dominates (|1e-9 - 2e-9| / max(1e-8, 3e-9) = 0.1).
    assert tb.rel_error(a, b) == pytest.approx(0.1)
    # Normwise: the largest difference over the largest magnitude.
    assert tb.scaled_error(a, b) == pytest.approx(1e-6 / 4.0, rel=1e-6)
    assert np.isnan(tb.rel_error([np.nan], [1.0]))
    with pytest.raises(ValueError, match="rel_error: shapes differ, \\(2,\\) vs \\(3,\\)"):
        tb.rel_error(np.ones(2), np.ones(3))
    assert tb.scaled_error(np.zeros(0), np.zeros(0)) == 0.0


def test_gradcheck_passes_a_right_gradient_and_fails_a_wrong_one():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    right = tb.gradcheck(lambda a, b: tb.tanh(a @ b), x, w)
    assert right and set(right.errors) == {"input0", "input1"}
    assert max(right.errors.values()) < 1e-7
    # A graph that hides one use of `a` behind a fresh leaf: the analytic gradient is half
    # the true one (a instead of 2a), which gradcheck must catch.
    wrong = tb.gradcheck(lambda a: a * tb.Node(a.data, requires_grad=False), x)
    assert not wrong
    assert "FAILED" in str(wrong)
    assert wrong.errors["input0"] == pytest.approx(1 / 3, rel=1e-6)

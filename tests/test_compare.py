"""compare never cries wolf: correct code passes on the smallest batches, wrong code fails."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_bn as tb
from tinygrad_bn.cli import sample_batch
from tinygrad_bn.norm import FusedNorm

# Shapes where each statistic has one or two values: the gradients nearly vanish by
# cancellation, and plain float64 central differences are off by more than 1e-8.
SMALL = [("batch", (2, 5), None), ("batch", (2, 50), None), ("layer", (5, 2), None),
         ("spatial", (1, 3, 1, 2), None), ("spatial", (2, 3, 1, 1), None),
         ("group", (1, 4, 1, 1), 2)]


@pytest.mark.parametrize("kind,shape,groups", SMALL)
def test_correct_code_passes_for_every_seed(kind, shape, groups):
    for seed in range(20):
        x, gamma, beta, dout = sample_batch(shape, "float64", seed, norm=kind, groups=groups)
        report = tb.compare_normalization(kind, x, gamma, beta, dout, groups=groups)
        assert report.ok, (seed, str(report))


@pytest.mark.parametrize("kind,shape,groups", SMALL)
def test_a_wrong_gradient_still_fails(kind, shape, groups, monkeypatch):
    textbook = FusedNorm.backward

    def slightly_wrong(upstream, x, gamma, beta, out, **params):
        dx, dgamma, dbeta = textbook(upstream, x, gamma, beta, out, **params)
        return dx * 1.01, dgamma, dbeta  # a 1% error in dx

    monkeypatch.setattr(FusedNorm, "backward", staticmethod(slightly_wrong))
    for seed in range(20):
        x, gamma, beta, dout = sample_batch(shape, "float64", seed, norm=kind, groups=groups)
        report = tb.compare_normalization(kind, x, gamma, beta, dout, groups=groups)
        assert not report.ok and "dx fused~numeric" in str(report), (seed, str(report))


def test_raised_tolerances_say_why():
    x, gamma, beta, dout = sample_batch((2, 5), "float64", 3)
    text = str(tb.compare_batchnorm(x, gamma, beta, dout))
    assert "dx: raised to" in text and "times smaller than the terms it is summed from" in text
    assert "verdict   ok" in text


def test_reference_gradient_is_exact_where_plain_differences_are_not():
    x, gamma, beta, dout = sample_batch((2, 5), "float64", 0)
    spec = tb.norm.norm_spec("batch", x.shape)
    exact = tb.norm.closed_form_backward(dout.astype(np.longdouble), x.astype(np.longdouble),
                                         gamma.astype(np.longdouble), spec)[0]
    exact = exact.astype(np.float64)

    def forward(a):
        return tb.norm.normalize(a, gamma.astype(a.dtype), beta.astype(a.dtype),
                                 *tb.norm.statistics(a, spec), spec)

    reference, error = tb.check.gradcheck.reference_gradient(forward, x, dout)
    plain = tb.numerical_gradient(forward, x.copy(), dout)
    assert tb.scaled_error(reference, exact) < 1e-7 < tb.scaled_error(plain, exact)
    assert np.max(np.abs(reference - exact)) <= 10 * np.max(error)


def test_large_shapes_are_sampled_with_progress():
    exe = pathlib.Path(sys.executable).with_name("tinygrad-bn")
    result = subprocess.run([str(exe), "compare", "--shape", "100,500"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "dx at 100 of 50000 coordinates" in result.stdout and "(sampled)" in result.stdout
    assert "numeric check: 300 of 300 coordinates" in result.stderr

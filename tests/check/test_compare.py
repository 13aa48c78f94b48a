"""compare never cries wolf: correct code passes on the smallest batches, wrong code fails."""

import pathlib
import re
import subprocess
import sys
import time

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
        x, gamma, beta, dout = sample_batch(shape, "float64", seed, kind=kind, groups=groups)
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
        x, gamma, beta, dout = sample_batch(shape, "float64", seed, kind=kind, groups=groups)
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
    calls = []
    tb.compare_normalization("batch", *sample_batch((100, 500), "float64", 0),
                             progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (300, 300) and len(calls) >= 10
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


def test_the_command_lines_progress_says_how_far_it_is(capsys):
    from tinygrad_bn.cli import progress_printer
    show = progress_printer("numeric check", after=0.0)
    show(20, 300)
    show(300, 300)
    assert "numeric check: 300 of 300 coordinates" in capsys.readouterr().err


def _compare_cli(*args):
    exe = pathlib.Path(sys.executable).with_name("tinygrad-bn")
    return subprocess.run([str(exe), "compare", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("shape", ["100000,1000", "100000,100000", "5000000,2"])
def test_too_large_a_compare_is_refused_at_once_with_its_estimate(shape):
    start = time.perf_counter()
    result = _compare_cli("--shape", shape)
    assert time.perf_counter() - start < 30
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "--shape" in line]
    assert re.search(r"--shape: x \(.*\) has [\d.e+]+ values; compare needs about [\d.]+ [MGT]B "
                     r"and [\d.e+]+ value evaluations in its numeric check .*try --shape \d+,\d+ "
                     r"\(about [\d.]+ [MGT]B\)", line), line
    suggested = tuple(int(s) for s in re.search(r"try --shape (\d+),(\d+)", line).groups())
    assert tb.check.compare.compare_cost(suggested)[1] is None  # the suggestion is accepted


def test_a_compare_too_large_is_refused_by_the_library_too():
    with pytest.raises(ValueError, match=r"x: x \(5000000, 2\) has 1e\+07 values.*more than "
                       r"2e\+09 value evaluations"):
        tb.compare_batchnorm(np.ones((5000000, 2)), np.ones(2), np.zeros(2))


@pytest.mark.parametrize("kind, shape, groups, axis", [
    ("batch", (7, 4), None, None), ("batch", (4, 3, 5), None, (0, 2)),
    ("spatial", (3, 2, 2, 3), None, None), ("layer", (3, 2, 4), None, None),
    ("group", (2, 6, 2, 2), 3, None)])
def test_each_probe_is_the_full_forwards_central_difference(kind, shape, groups, axis):
    # The numeric check evaluates only the outputs a probed entry reaches: the same numbers as
    # central differences of the whole forward (up to the order of an extended-precision sum).
    from tinygrad_bn.check.compare import numeric_gradients
    from tinygrad_bn.check.gradcheck import EXTENDED, reference_gradient
    from tinygrad_bn.norm import batchnorm_spec, normalize, statistics
    spec = (batchnorm_spec(shape, axis, 1e-5) if axis else
            tb.norm.norm_spec(kind, shape, groups=groups))
    rng = np.random.default_rng(3)
    x = 2 * rng.standard_normal(shape) + 1
    gamma, beta = rng.standard_normal(spec.param_shape), rng.standard_normal(spec.param_shape)
    dout = rng.standard_normal(shape)
    numeric, errors, _, _ = numeric_gradients(spec, x, gamma, beta, dout)
    arrays = [a.astype(EXTENDED) for a in (x, gamma, beta)]
    for index in range(3):
        def forward(probe, index=index):
            args = list(arrays)
            args[index] = probe
            return normalize(*args, *statistics(args[0], spec), spec)
        whole, whole_error = reference_gradient(forward, arrays[index], dout)
        assert np.all(np.isfinite(numeric[index]))
        assert np.allclose(numeric[index], whole, rtol=1e-12, atol=1e-12), index
        assert np.allclose(errors[index], whole_error, rtol=1e-3, atol=1e-12), index


def test_one_value_per_statistic_is_explained_in_words():
    result = _compare_cli("--shape", "1,5")
    assert result.returncode == 0, result.stderr
    assert "raised to" not in result.stdout and "times smaller" not in result.stdout
    assert ("one value per statistic (x (1, 5) reduced over axes (0,)): x - mean is 0, so the "
            "output is beta and dx is exactly zero") in result.stdout
    report = tb.compare_normalization("layer", *sample_batch((3, 1), "float64", 0, kind="layer"))
    assert report.ok and "dx" not in report.raised and "dx is exactly zero" in str(report)

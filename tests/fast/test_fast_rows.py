"""Layer and group norm by rows: the one-call training forward (statistics and output
together), the statistics and the backward, on both backends, at sizes that take the row
passes (odd sizes, rows longer than a cache block, groups of many channels, H * W = 1).

Each result is judged against an extended-precision reference and must be within max(a few
eps, 1.5x the textbook's own error) of it; results are the same bits for 1 to 4 threads.
"""

import numpy as np
import pytest

from benchmarks.exactness import error_in_eps, exact_normalization
from tinygrad_bn import fast
from tinygrad_bn.fast import kernels
from tinygrad_bn.fast import norm as fast_norm
from tinygrad_bn.norm import FusedNorm, norm_spec

A_FEW_EPS = 8.0

# All above SMALL_MAX_ELEMENTS, where the small inputs' one serial call takes over.
SHAPES = [
    ("layer", (129, 1024), None),      # many rows: several runs of pipelined rows
    ("layer", (30001, 3), None),       # rows shorter than the shift's samples
    ("layer", (731, 7, 13), None),     # odd rows of odd length, D of two axes
    ("layer", (3, 70001), None),       # rows longer than a cache block, fewer rows than runs
    ("group", (20, 96, 5, 7), 3),      # 32 channels of 35 values per group
    ("group", (30, 256, 3, 3), 2),     # 128 channels per group: the shift samples every 4th
    ("group", (4100, 16, 1, 1), 4),    # H * W = 1: gamma per value of a row
    ("group", (33, 8, 16, 16), 8),     # one channel per group
]


def _inputs(kind, shape, groups, dtype, center, seed=0):
    rng = np.random.default_rng(seed)
    spec = norm_spec(kind, shape, groups=groups)
    x = (center + rng.standard_normal(shape)).astype(dtype)
    gamma = (1 + 0.5 * rng.standard_normal(spec.param_shape)).astype(dtype)
    beta = rng.standard_normal(spec.param_shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return spec, x, gamma, beta, dout


def _passes(spec, x, gamma, beta, dout):
    """out, mean, var of the one-call forward; the statistics and forward apart; the
    backward's dx, dgamma, dbeta."""
    with np.errstate(all="ignore"):
        out, mean, var = FusedNorm.forward_with_statistics(x, gamma, beta, spec=spec)
        mean_apart, var_apart = FusedNorm.statistics(x, spec)
        out_apart = FusedNorm.forward(x, gamma, beta, spec=spec, mean=mean_apart, var=var_apart)
        grads = FusedNorm.backward(dout, x, gamma, beta, out, spec=spec, mean=mean, var=var)
    return (out, mean, var, out_apart, mean_apart, var_apart, *grads)


def _exact_statistics(x, spec):
    xl = spec.grouped(x.astype(np.longdouble))
    mean = xl.mean(axis=spec.reduce_axes, keepdims=True)
    return mean, ((xl - mean) ** 2).mean(axis=spec.reduce_axes, keepdims=True)


def _errors(results, spec, x, gamma, beta, dout):
    """Each result's error in eps of x's dtype against the extended-precision reference."""
    out_e, dx_e, dgamma_e, dbeta_e = exact_normalization(x, gamma, beta, dout, spec)
    mean_e, var_e = _exact_statistics(x, spec)
    exact = (out_e, mean_e, var_e, out_e, mean_e, var_e, dx_e, dgamma_e, dbeta_e)
    # Every result in eps of x's dtype: the statistics are float64 on every path, and what a
    # user receives of them (a module's running statistics) is in x's dtype.
    dtypes = [x.dtype] * 9
    return [error_in_eps(r, e, d) for r, e, d in zip(results, exact, dtypes, strict=True)]


NAMES = ("out", "mean", "var", "out (apart)", "mean (apart)", "var (apart)", "dx", "dgamma",
         "dbeta")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("kind", "shape", "groups"), SHAPES)
def test_row_passes_are_as_exact_as_the_textbook(kind, shape, groups, dtype, backend):
    spec, x, gamma, beta, dout = _inputs(kind, shape, groups, dtype, center=3.0)
    rows = kernels.row_layout_for(x, spec, fast_norm.COMPILED_MIN_ELEMENTS)
    assert rows is not None
    expected_route = "rows" if backend == "numba" else (
        "blocked rows" if x.size >= kernels.MIN_ELEMENTS else "lean")
    assert fast_norm._route(x, spec)[0] == expected_route
    with fast.disabled():
        textbook = _errors(_passes(spec, x, gamma, beta, dout), spec, x, gamma, beta, dout)
    by_threads = []
    for threads in (1, 2, 3, 4):
        kernels.set_num_threads(threads)
        try:
            by_threads.append(_passes(spec, x, gamma, beta, dout))
        finally:
            kernels.set_num_threads(2)
    errors = _errors(by_threads[0], spec, x, gamma, beta, dout)
    for name, error, bound in zip(NAMES, errors, textbook, strict=True):
        assert error <= max(A_FEW_EPS, 1.5 * bound), (name, error, bound)
    results = by_threads[0]
    assert results[0].dtype == x.dtype and results[0].shape == x.shape
    assert results[1].shape == results[4].shape and results[2].shape == results[5].shape
    for other in by_threads[1:]:  # fixed partial-sum order: the same bits for any thread count
        for name, a, b in zip(NAMES, results, other, strict=True):
            assert np.array_equal(a, b), name


@pytest.mark.parametrize("kind", ["layer", "group"])
def test_row_statistics_about_a_far_shift_take_a_second_pass(kind, backend):
    # The values the shift is sampled from (a row's first values; the first values of each
    # channel of a group) sit far out, so the shift is far from the mean: the one-pass
    # formula about it would lose ~log2(count / samples) bits of the variance.
    rng = np.random.default_rng(3)
    if kind == "layer":
        shape, groups = (64, 1024), None
        x = rng.standard_normal(shape)
        x[:, :32] += 1e3
    else:
        shape, groups = (4, 32, 32, 32), 4
        x = rng.standard_normal(shape)
        x[:, :, :1, :4] += 1e3
    spec, _, gamma, beta, dout = _inputs(kind, shape, groups, np.float64, center=0.0)
    results = _passes(spec, x, gamma, beta, dout)
    errors = _errors(results, spec, x, gamma, beta, dout)
    for name, error in zip(NAMES, errors, strict=True):
        assert error <= A_FEW_EPS, (name, error)


@pytest.mark.parametrize(("kind", "shape", "groups"), [("layer", (64, 4096), None),
                                                       ("group", (16, 8, 16, 16), 4)])
def test_sums_past_overflow_give_the_textbooks_answer(kind, shape, groups, backend):
    # |x| ~ 1e306: the squares overflow (var = inf, ivar = 0, xhat = 0), and so would a
    # row's sum of g * (x - mean) before it is multiplied by ivar: the textbook's dx and
    # dgamma are 0, never inf * 0.
    spec, _, gamma, beta, dout = _inputs(kind, shape, groups, np.float64, center=0.0)
    x = 1e306 * np.random.default_rng(9).standard_normal(shape)
    out, mean, var, *_, dx, dgamma, dbeta = _passes(spec, x, gamma, beta, dout)
    assert np.all(np.isinf(var))
    assert np.array_equal(out, np.broadcast_to(beta.reshape(spec.param_bshape), shape))
    assert not np.any(dx) and not np.any(dgamma) and np.all(np.isfinite(dbeta))


@pytest.mark.parametrize(("kind", "shape", "groups"), [("group", (4, 4, 128, 128), 2),
                                                       ("layer", (16, 8192), None)])
def test_long_rows_with_an_outlier_keep_their_digits(kind, shape, groups):
    # Each row's first value 1e6 off the rest, rows of 8192 to 32768 values: the compiled
    # passes' sums over a row or a channel go in blocks, carried, so their error does not
    # grow with the row (summed as one running total, dgamma here was 16 eps; textbook 0.8).
    pytest.importorskip("numba")
    from benchmarks.exactness import Case, errors_in_eps

    previous = fast.numba_enabled()
    fast.use_numba(True)
    try:
        for seed in (0, 1):
            rng = np.random.default_rng(seed)
            spec = norm_spec(kind, shape, groups=groups)
            x = 3.0 + rng.standard_normal(shape)
            x.reshape(spec.grouped_shape[0] * spec.grouped_shape[1] if groups else shape[0],
                      -1)[:, 0] += 1e6
            case = Case("outlier", kind, x, 1 + 0.5 * rng.standard_normal(spec.param_shape),
                        rng.standard_normal(spec.param_shape), rng.standard_normal(shape), groups)
            assert fast_norm._route(x, spec)[0] == "rows"
            for together in (False, True):
                fast_error, textbook_error = errors_in_eps(case, together)
                assert fast_error <= max(A_FEW_EPS, 1.5 * textbook_error), (seed, together,
                                                                             fast_error)
    finally:
        fast.use_numba(previous)


CARRIED_SUM = """
import numpy as np
from tinygrad_bn.fast import numba_kernels
# Three blocks: 1e16, then 1 and 1. Summed block after block, each 1 rounds away (ties to
# even); carried, the two come back: 1e16 + 2. The pass is the first compiled call here.
flat = np.zeros((1, 3 * numba_kernels.SUM_BLOCK))
flat[0, 0] = 1e16
flat[0, numba_kernels.SUM_BLOCK] = flat[0, 2 * numba_kernels.SUM_BLOCK] = 1.0
print(numba_kernels._shifted_sums(flat, 0, 0.0)[0] - 1e16, numba_kernels._carry_add(1e16, 0.0, 1.0))
"""


def test_carried_sums_keep_their_carry_when_a_fast_math_pass_compiles_first(tmp_path):
    # numba compiles a lazily compiled function on the options of its first caller: called
    # first from a fast-math pass, the two-sum was reassociated and its carry folded to 0.
    pytest.importorskip("numba")
    import os
    import subprocess
    import sys

    for _ in range(2):  # compiled into an empty cache, then loaded from it
        result = subprocess.run([sys.executable, "-c", CARRIED_SUM], capture_output=True,
                                text=True, timeout=300,
                                env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == ["2.0", "(1e+16,", "1.0)"], result.stdout


@pytest.mark.parametrize(("kind", "shape", "groups"), [("layer", (70000, 1), None),
                                                       ("group", (70000, 2, 1, 1), 2),
                                                       ("group", (2, 70000, 1, 1), 70000)])
def test_rows_of_one_value_have_a_zero_dx(kind, shape, groups, backend):
    # One value per statistic (D = 1; a group of one channel with H * W = 1): xhat = 0 and
    # g - mean(g) = 0 exactly, so the textbook's dx is exactly zero. A multiply-add fusing
    # gamma * dy into the subtraction of its own rounded value left ~1e-14 there.
    spec, x, gamma, beta, dout = _inputs(kind, shape, groups, np.float64, center=5.0)
    results = _passes(spec, x, gamma, beta, dout)
    with fast.disabled():
        textbook = _passes(spec, x, gamma, beta, dout)
    assert not np.any(textbook[6])
    assert not np.any(results[6]), np.abs(results[6]).max()

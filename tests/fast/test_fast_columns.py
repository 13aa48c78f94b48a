"""Batch norm's compiled (A, K) column passes: the sums take four rows a page apart and the
second passes take blocks of rows last block first; every row is counted and written once
whatever the row step, the chunk and block tails and the thread count, as exact as the
textbook."""

import numpy as np
import pytest

from benchmarks.exactness import Case, errors_in_eps
from tinygrad_bn.fast import norm as fast_norm
from tinygrad_bn.norm import norm_spec

nk = pytest.importorskip("tinygrad_bn.fast.numba_kernels")

A_FEW_EPS = 8.0
# (A, K): row steps 1 (a row fills a page), 2, 3, 16 (the cap) in float32 and float64;
# rows per chunk not a multiple of four steps, runs not a multiple of the block.
SHAPES = [(4099, 1024), (8191, 512), (3001, 341), (20000, 7), (1203, 1537), (40000, 5)]


def _layout(shape, dtype):
    plan = fast_norm._route(np.empty(shape, dtype), norm_spec("batch", shape))
    assert plan[0] == "columns" and plan[1].B == 1
    return plan[1]


def test_the_shapes_cover_every_row_step():
    steps = {nk._row_step(_layout(shape, dtype), np.dtype(dtype))
             for shape in SHAPES for dtype in (np.float32, np.float64)}
    assert {1, 2, 3, 16} <= steps, steps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_row_counts_once_in_the_sums(shape, dtype, compiled):
    # Row a holds a (and column k adds k): a row skipped or taken twice moves the mean by at
    # least 1 / A, and the sums of dy and dy * xhat by a whole row's value.
    rows, features = shape
    layout = _layout(shape, dtype)
    x = (np.arange(rows)[:, None] + np.arange(features)[None, :] % 3).astype(dtype)
    mean, var = nk.column_statistics(x, layout, 2)
    exact_mean = (rows - 1) / 2 + np.arange(features) % 3
    assert np.allclose(mean, exact_mean, rtol=1e-12, atol=0), np.abs(mean - exact_mean).max()
    assert np.allclose(var, (rows * rows - 1) / 12, rtol=1e-9), var[:3]
    dy = np.repeat(np.arange(rows, dtype=dtype)[:, None] % 5 - 2, features, axis=1)
    gamma = np.ones(features)
    dx, dgamma, dbeta = nk.column_backward(dy, x, gamma, mean, var, 1e-5, layout, 2)
    exact_dbeta = np.sum(np.arange(rows) % 5 - 2.0)
    assert np.all(dbeta == exact_dbeta), (dbeta[:3], exact_dbeta)
    xhat = (x.astype(np.float64) - mean) / np.sqrt(var + 1e-5)
    exact_dgamma = np.sum(dy.astype(np.float64) * xhat, axis=0)
    assert np.allclose(dgamma, exact_dgamma, rtol=1e-6, atol=1e-6 * rows)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_row_is_written_once_by_the_second_passes(shape, dtype, compiled):
    # out and dx are set to NaN first: a row the reversed blocks skip keeps its NaN, a row
    # written from another row's values is off by a whole row.
    rows, features = shape
    layout = _layout(shape, dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    mean, var = nk.column_statistics(x, layout, 2)
    gamma, beta = 1 + 0.1 * rng.standard_normal(features), rng.standard_normal(features)
    ivar = 1 / np.sqrt(var + 1e-5)
    runs = nk._elementwise_runs(layout, np.dtype(dtype), 2)
    assert runs[1] < rows // 2  # more than one block per run: the reversed order is taken
    out = np.full(shape, np.nan, dtype)
    nk.run(nk.col_normalize2, 2, x, mean, gamma * ivar, beta, out, *runs)
    expected = (x - mean) * (gamma * ivar) + beta
    assert np.allclose(out, expected, rtol=1e-5, atol=1e-5), np.abs(out - expected).max()
    md, mdx = dy.mean(axis=0, dtype=np.float64), np.mean(dy * ((x - mean) * ivar), axis=0)
    dx = np.full(shape, np.nan, dtype)
    nk.run(nk.col_dx2, 2, dy, x, mean, ivar, gamma, gamma * md, gamma * mdx, dx, *runs)
    expected = gamma * ivar * (dy - md - (x - mean) * ivar * mdx)
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    assert np.allclose(dx, expected, rtol=tolerance, atol=tolerance), np.abs(dx - expected).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("center", [0.0, 1e4])
def test_column_passes_are_as_exact_as_the_textbook(shape, dtype, center, compiled):
    rng = np.random.default_rng(2)
    features = shape[1]
    case = Case("columns", "batch", (center + rng.standard_normal(shape)).astype(dtype),
                (1 + 0.5 * rng.standard_normal(features)).astype(dtype),
                rng.standard_normal(features).astype(dtype),
                rng.standard_normal(shape).astype(dtype))
    for together in (False, True):
        fast_error, textbook_error = errors_in_eps(case, together)
        assert fast_error <= max(A_FEW_EPS, 1.5 * textbook_error), (fast_error, textbook_error)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_long_single_feature_column_is_as_exact_as_the_textbook(seed, compiled):
    # One feature over 2^18 rows: thousands of partial sums per statistic, which the textbook
    # sums pairwise. With dout about 1, dgamma = sum(dout * xhat) moves by sum(dout) ~ 2^18
    # times any error of the mean, so a mean rounded at the scale of its shift (or biased by
    # the shift's low bits) shows, and so do the partials added in a running sum.
    rng = np.random.default_rng(seed)
    shape = (1 << 18, 1)
    assert _layout(shape, np.float64).A == shape[0]
    case = Case("long column", "batch", rng.standard_normal(shape), np.ones(1), np.zeros(1),
                1 + rng.standard_normal(shape))
    for together in (False, True):
        fast_error, textbook_error = errors_in_eps(case, together)
        assert fast_error <= max(A_FEW_EPS, 1.5 * textbook_error), (fast_error, textbook_error)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_passes_give_the_same_bits_on_any_thread_count(dtype, compiled, on_thread_counts):
    rng = np.random.default_rng(3)
    for shape in SHAPES[:4]:
        features = shape[1]
        case = Case("columns", "batch", (3 + rng.standard_normal(shape)).astype(dtype),
                    np.ones(features, dtype), np.zeros(features, dtype),
                    rng.standard_normal(shape).astype(dtype))
        results = on_thread_counts(case, (1, 2, 3))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert np.array_equal(a, b), shape

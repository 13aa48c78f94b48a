"""Spatial batch norm's compiled channel passes: taken where a channel fits in cache, equal to
the column passes and the textbook, as exact as the textbook, the same bits on any thread count."""

import numpy as np
import pytest

from benchmarks.exactness import Case, errors_in_eps, run_case
from tinygrad_bn import fast
from tinygrad_bn.fast import norm as fast_norm
from tinygrad_bn.norm import norm_spec

nk = pytest.importorskip("tinygrad_bn.fast.numba_kernels")

A_FEW_EPS = 8.0
# (N, C, H, W): segments of 16 to 1024 values, channels of 60 KB to the whole cache block,
# odd extents everywhere, all above the small inputs' one serial call (SMALL_MAX_ELEMENTS).
FITTING = [(37, 5, 23, 19), (99, 3, 17, 17), (32, 64, 32, 32), (1100, 6, 4, 4), (5, 9, 50, 30)]
# Channels above `CHANNEL_BYTES` in float32 and float64; segments too short to vectorize.
NOT_FITTING = [(160, 3, 32, 32), (4096, 4, 3, 3), (4096, 3, 1, 8)]


def _case(shape, dtype, center=0.0, seed=0) -> Case:
    rng = np.random.default_rng(seed)
    x = (center + rng.standard_normal(shape)).astype(dtype)
    channels = shape[1]
    return Case("channels", "spatial", x, (1 + 0.5 * rng.standard_normal(channels)).astype(dtype),
                rng.standard_normal(channels).astype(dtype),
                rng.standard_normal(shape).astype(dtype))


def _layout(shape, dtype):
    x = np.empty(shape, dtype)
    plan = fast_norm._route(x, norm_spec("spatial", shape))
    assert plan[0] == "columns"
    return plan[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_passes_are_taken_where_a_channel_fits(dtype, compiled):
    for shape in FITTING:
        assert nk.by_channel(_layout(shape, dtype), np.dtype(dtype)), shape
    for shape in NOT_FITTING:
        assert not nk.by_channel(_layout(shape, dtype), np.dtype(dtype)), shape
    # float32 channels are half the bytes: this one fits in float32 only.
    assert nk.by_channel(_layout((100, 3, 32, 32), np.float32), np.dtype(np.float32))
    assert not nk.by_channel(_layout((100, 3, 32, 32), np.float64), np.dtype(np.float64))


def _kernels_run(monkeypatch, case):
    called = []
    real_run = nk.run

    def spy(kernel, threads, *args):
        called.append(kernel)
        return real_run(kernel, threads, *args)

    monkeypatch.setattr(nk, "run", spy)
    result = run_case(case, together=True)
    monkeypatch.setattr(nk, "run", real_run)
    return called, result


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", FITTING + NOT_FITTING)
@pytest.mark.parametrize("center", [0.0, 3.0, 1e4])
def test_channel_passes_are_as_exact_as_the_textbook(shape, dtype, center, monkeypatch,
                                                    compiled):
    case = _case(shape, dtype, center)
    called, _ = _kernels_run(monkeypatch, case)
    fits = shape in FITTING
    # Forward and backward are one compiled call each, with the statistics, where it fits.
    assert (called == [nk.channel_forward, nk.channel_backward]) == fits, called
    fast_error, textbook_error = errors_in_eps(case, together=True)
    assert fast_error <= max(A_FEW_EPS, 1.5 * textbook_error), (fast_error, textbook_error)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_passes_equal_the_column_passes(dtype, monkeypatch, compiled):
    case = _case((33, 3, 17, 17), dtype, center=3.0, seed=1)
    by_channel = run_case(case, together=True)
    monkeypatch.setattr(nk, "by_channel", lambda layout, dtype: False)
    by_column = run_case(case, together=True)
    tolerance = 1e-14 if dtype == np.float64 else 1e-6
    for name, a, b in zip(("out", "dx", "dgamma", "dbeta"), by_channel, by_column, strict=True):
        assert a.dtype == b.dtype == dtype, name
        assert np.max(np.abs(a - b)) <= tolerance * np.max(np.abs(b)), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_passes_give_the_same_bits_on_any_thread_count(dtype, compiled,
                                                                on_thread_counts):
    case = _case((32, 8, 24, 24), dtype, center=1.0, seed=2)
    results = on_thread_counts(case, (1, 2, 3, 4))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert np.array_equal(a, b)


def test_overflowing_channel_variance_gives_the_textbooks_answer(compiled):
    # Squares past float64's range: the variance is inf, out is beta and dx is 0, as the
    # textbook has it (not inf * 0).
    case = _case((8, 4, 16, 16), np.float64, seed=3)
    case.x = case.x * 1e200
    out, dx, dgamma, dbeta = run_case(case, together=True)
    with fast.disabled():
        expected = run_case(case, together=True)
    for name, a, b in zip(("out", "dx", "dgamma", "dbeta"), (out, dx, dgamma, dbeta), expected,
                          strict=True):
        assert np.array_equal(np.isfinite(a), np.isfinite(b)), name
        assert np.allclose(a, b, rtol=1e-12, atol=0), name

"""The numpy passes' float32 dx: taken where its error bound holds, never where it does not.

Each test has inputs on both sides of the check (`kernels.float32_dx_is_exact`), and the
inputs the check refuses are shown to break the float32 formula itself, so that a check
that let everything through would fail here.
"""

import numpy as np
import pytest

from benchmarks.exactness import (
    Case,
    error_in_eps,
    errors_in_eps,
    exact_normalization,
    run_case,
)
from tinygrad_bn import fast
from tinygrad_bn.fast import kernels
from tinygrad_bn.norm import norm_spec

A_FEW_EPS = 8.0


@pytest.fixture
def numpy_backend():
    previous = fast.numba_enabled()
    fast.use_numba(False)
    yield
    fast.use_numba(previous)


@pytest.fixture
def float32_calls(monkeypatch, numpy_backend):
    """How many times the float32 dx ran (a list the spy appends to)."""
    calls = []
    for name in ("dx_float32", "row_dx_float32"):
        original = getattr(kernels, name, None)
        if original is None:
            continue

        def spy(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernels, name, spy)
    return calls


def _case(kind, x, dout, groups=None, seed=0):
    rng = np.random.default_rng(seed)
    spec = norm_spec(kind, x.shape, groups=groups)
    gamma = (1 + 0.5 * rng.standard_normal(spec.param_shape)).astype(x.dtype)
    beta = rng.standard_normal(spec.param_shape).astype(x.dtype)
    return Case("float32 dx", kind, x, gamma, beta, dout.astype(x.dtype), groups)


def _exact_enough(case):
    fast_error, textbook_error = errors_in_eps(case)
    assert fast_error <= max(A_FEW_EPS, 1.5 * textbook_error), (fast_error, textbook_error)


def _normwise_eps(result, exact):
    r, e = result.astype(np.longdouble), exact
    return float(np.max(np.abs(r - e)) / np.max(np.abs(r) + np.abs(e)) / np.finfo(np.float32).eps)


CASES = [("batch", (4096, 64), None), ("spatial", (32, 8, 16, 16), None),
         ("group", (32, 8, 16, 16), 4)]


@pytest.mark.parametrize("kind, shape, groups", CASES)
@pytest.mark.parametrize("center", [0.0, 3.0, 1e5])
def test_uncorrelated_gradients_take_the_float32_dx(kind, shape, groups, center, float32_calls):
    # Far from zero too: x - mean is then x - hi - lo (the mean in two float32s).
    rng = np.random.default_rng(1)
    x = (center + rng.standard_normal(shape)).astype(np.float32)
    case = _case(kind, x, rng.standard_normal(shape), groups)
    run_case(case)
    assert float32_calls, "the float32 dx was not taken"
    _exact_enough(case)


def _correlated(kind, shape, groups, rng):
    # dout nearly a line in xhat (per statistic): dx is the small remainder, 1e-6 of dout.
    x = rng.standard_normal(shape).astype(np.float32)
    spec = norm_spec(kind, shape, groups=groups)
    xs = spec.grouped(x.astype(np.float64))
    mean = xs.mean(axis=spec.reduce_axes, keepdims=True)
    xhat = ((xs - mean) / xs.std(axis=spec.reduce_axes, keepdims=True)).reshape(shape)
    return x, 1e3 * (xhat + 1e-6 * rng.standard_normal(shape))


@pytest.mark.parametrize("kind, shape, groups", CASES)
def test_gradients_whose_dx_cancels_take_float64(kind, shape, groups, float32_calls):
    rng = np.random.default_rng(2)
    x, dout = _correlated(kind, shape, groups, rng)
    case = _case(kind, x, dout, groups)
    run_case(case)
    assert not float32_calls, "the float32 dx was taken where dx cancels"
    _exact_enough(case)


def test_the_float32_dx_itself_fails_where_the_check_refuses(numpy_backend):
    # The formula forced on the refused input: thousands of eps off, which is why it is refused.
    rng = np.random.default_rng(3)
    x, dout = _correlated("batch", (4096, 64), None, rng)
    dout = dout.astype(np.float32)
    case = _case("batch", x, dout)
    layout = kernels.layout_for(x, (0,))
    mean64 = x.astype(np.float64).mean(axis=0)
    var64 = x.astype(np.float64).var(axis=0)
    ivar = 1 / np.sqrt(var64 + 1e-5)
    gamma = case.gamma.astype(np.float64)
    d64 = dout.astype(np.float64)
    sum_dy, sum_dy_d = d64.sum(axis=0), (d64 * (x - mean64)).sum(axis=0)
    assert not kernels.float32_dx_is_exact(sum_dy, sum_dy_d, (d64 * d64).sum(axis=0), gamma,
                                           mean64, var64, ivar, x.min(axis=0), x.max(axis=0),
                                           4096, True, square_terms=1)
    forced = kernels.dx_float32(x, dout, gamma * ivar, ivar * ivar * sum_dy_d / 4096,
                                sum_dy / 4096, mean64, True, kernels._spans(layout))
    exact = exact_normalization(x, case.gamma, case.beta, dout, norm_spec("batch", x.shape))[1]
    assert _normwise_eps(forced, exact) > 100 * A_FEW_EPS


@pytest.mark.parametrize("kind, shape, groups", CASES)
@pytest.mark.parametrize("scale", [1e37])
def test_magnitudes_at_the_float32_range_take_float64(kind, shape, groups, scale,
                                                      float32_calls):
    # Near overflow x - mean and its products leave float32; near underflow they lose bits.
    rng = np.random.default_rng(4)
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    case = _case(kind, x, rng.standard_normal(shape), groups)
    run_case(case)
    assert not float32_calls
    _exact_enough(case)


@pytest.mark.parametrize("kind, shape, groups", CASES + [("layer", (256, 512), None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_passes_leave_their_inputs_alone(kind, shape, groups, dtype, numpy_backend):
    rng = np.random.default_rng(5)
    case = _case(kind, rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape),
                 groups)
    before = [a.copy() for a in (case.x, case.gamma, case.beta, case.dout)]
    run_case(case)
    for kept, now in zip(before, (case.x, case.gamma, case.beta, case.dout)):
        assert np.array_equal(kept, now)


@pytest.mark.parametrize("kind, shape, groups", [("layer", (256, 512), None),
                                                 ("group", (32, 8, 16, 16), 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_one_pass_row_forward_gives_the_bits_of_statistics_then_forward(
        kind, shape, groups, dtype, numpy_backend):
    from tinygrad_bn.norm import FusedNorm

    rng = np.random.default_rng(6)
    case = _case(kind, (3 + rng.standard_normal(shape)).astype(dtype), rng.standard_normal(shape),
                 groups)
    spec = norm_spec(kind, shape, groups=groups)
    together = FusedNorm.forward_with_statistics(case.x, case.gamma, case.beta, spec=spec)
    mean, var = FusedNorm.statistics(case.x, spec)
    apart = (FusedNorm.forward(case.x, case.gamma, case.beta, spec=spec, mean=mean, var=var),
             mean, var)
    for one, other in zip(together, apart, strict=True):
        assert one.dtype == other.dtype and np.array_equal(one, other)


@pytest.mark.parametrize("kind, shape, groups", CASES)
@pytest.mark.parametrize("center", [0.5, 0.99, 1.01, 3.0])
def test_float64_dx_about_zero_stays_exact(kind, shape, groups, center, numpy_backend):
    # Either side of the float64 threshold of dx taken about 0 (EXPANDED_FLOAT64_RATIO).
    rng = np.random.default_rng(7)
    x = center + rng.standard_normal(shape)
    _exact_enough(_case(kind, x, rng.standard_normal(shape), groups))


@pytest.mark.parametrize("kind, shape, groups", CASES + [("layer", (256, 512), None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_blocks_give_the_same_bits_on_any_thread_count(kind, shape, groups, dtype,
                                                            monkeypatch, numpy_backend):
    # Small blocks: dozens of them per pass, dealt to 1, 2 or 3 threads.
    monkeypatch.setattr(kernels, "BLOCK_BYTES", 1 << 14)
    rng = np.random.default_rng(8)
    case = _case(kind, (0.5 + rng.standard_normal(shape)).astype(dtype),
                 rng.standard_normal(shape), groups)
    results = []
    try:
        for threads in (1, 2, 3):
            kernels.set_num_threads(threads)
            results.append(run_case(case))
    finally:
        kernels.set_num_threads(2)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert np.array_equal(a, b)
    _exact_enough(case)


def _per_statistic(array, spec):
    # One row per statistic (column, channel or group), its reduced values along the row.
    grouped = np.asarray(spec.grouped(array))
    kept = [a for a in range(grouped.ndim) if a not in spec.reduce_axes]
    moved = np.moveaxis(grouped, kept, list(range(len(kept))))
    return moved.reshape(-1, spec.count)


def _worst_statistic_error(case):
    # The largest normwise dx error of any one statistic's values, in eps32.
    spec = norm_spec(case.kind, case.x.shape, groups=case.groups)
    dx = run_case(case)[1]
    exact = exact_normalization(case.x, case.gamma, case.beta, case.dout, spec)[1]
    return max(error_in_eps(r, e, np.float32)
               for r, e in zip(_per_statistic(dx, spec), _per_statistic(exact, spec)))


@pytest.mark.parametrize("kind, shape, groups", CASES)
def test_one_statistic_whose_dx_cancels_is_exact_on_its_own(kind, shape, groups,
                                                            float32_calls):
    # The first statistic's dout is 1e-3 of nearly a line in xhat, the others random: the
    # array's dx is dominated by the others, the first's own dx is 1e-7 of its dout.
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(np.float32)
    spec = norm_spec(kind, shape, groups=groups)
    xs = spec.grouped(x.astype(np.float64))
    xhat = (xs - xs.mean(axis=spec.reduce_axes, keepdims=True)) \
        / xs.std(axis=spec.reduce_axes, keepdims=True)
    dout = spec.grouped(rng.standard_normal(shape))
    first = (slice(None), 0) if kind != "group" else (0, 0)
    dout[first] = 1e-3 * (xhat[first] + 0.3 + 1e-4 * rng.standard_normal(xhat[first].shape))
    case = _case(kind, x, dout.reshape(shape), groups)
    if kind == "batch":
        case = Case(case.family, kind, x, np.ones_like(case.gamma), case.beta, case.dout)
    assert _worst_statistic_error(case) <= A_FEW_EPS or not float32_calls


@pytest.mark.parametrize("kind, shape, groups", [("batch", (4096, 16), None)] + CASES)
def test_dx_next_to_the_float32_maximum_stays_finite(kind, shape, groups, numpy_backend):
    # dout scaled so that the exact max |dx| is float32's largest value: float32 factors
    # whose product rounds up past it would give inf.
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal(shape)
    spec = norm_spec(kind, shape, groups=groups)
    gamma = np.full(spec.param_shape, 1e30, np.float32)
    beta = np.zeros(spec.param_shape, np.float32)
    largest, scale = float(np.finfo(np.float32).max), 1.0
    for _ in range(8):  # rounding dout to float32 may carry the exact dx past the range:
        scaled = (dout * scale).astype(np.float32)  # kept where it still rounds to finite
        top = float(np.max(np.abs(exact_normalization(x, gamma, beta, scaled, spec)[1])))
        if largest * (1 - 1e-7) <= top <= largest * (1 + 0.97 * 2.0**-25):
            break
        scale *= largest / top
    assert largest * (1 - 1e-7) <= top <= largest * (1 + 0.97 * 2.0**-25)
    case = Case("float32 dx", kind, x, gamma, beta, scaled, groups)
    assert np.all(np.isfinite(run_case(case)[1]))
    _exact_enough(case)

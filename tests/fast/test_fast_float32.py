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


# --- the float32 forward: out = scale * (x - (mean - beta / scale)) ------------------------


@pytest.fixture
def folded_centres(monkeypatch, numpy_backend):
    """What `kernels.beta_folded_centre` answered, one entry per normalize pass."""
    answers = []
    original = kernels.beta_folded_centre

    def spy(*args, **kwargs):
        answer = original(*args, **kwargs)
        answers.append(answer is not None)
        return answer

    monkeypatch.setattr(kernels, "beta_folded_centre", spy)
    return answers


@pytest.mark.parametrize("kind, shape", [("batch", (4096, 64)), ("spatial", (32, 8, 16, 16))])
@pytest.mark.parametrize("center", [0.0, 3.0, 500.0])
def test_float32_out_takes_the_folded_centre_and_stays_exact(kind, shape, center,
                                                             folded_centres):
    rng = np.random.default_rng(7)
    x = (center + rng.standard_normal(shape)).astype(np.float32)
    case = _case(kind, x, rng.standard_normal(shape))
    case.beta = (3 * rng.standard_normal(case.beta.shape)).astype(np.float32)  # beta matters
    out = run_case(case)[0]
    assert folded_centres == [True]
    exact = exact_normalization(case.x, case.gamma, case.beta, case.dout,
                                norm_spec(kind, shape))[0]
    # Rounded once from a float64 result within 2^-19 eps32: half an eps32, normwise.
    assert _normwise_eps(out, exact) <= 0.5 + 2.0**-10
    _exact_enough(case)


def test_the_folded_centre_is_refused_where_it_cannot_hold(folded_centres):
    # gamma 0 (out = beta, while beta / scale is inf), a mean 2^12 spreads from 0, a constant
    # feature: each takes the float64 normalize, and each out is the textbook's.
    rng = np.random.default_rng(8)
    x = (1 + rng.standard_normal((4096, 16))).astype(np.float32)
    zero_gamma = _case("batch", x, rng.standard_normal(x.shape))
    zero_gamma.gamma[3] = 0
    far = _case("batch", (x + 4096).astype(np.float32), rng.standard_normal(x.shape))
    constant = x.copy()
    constant[:, 5] = 2.5
    flat = _case("batch", constant, rng.standard_normal(x.shape))
    for case in (zero_gamma, far, flat):
        folded_centres.clear()
        _exact_enough(case)
        assert folded_centres == [False]
    assert np.all(run_case(zero_gamma)[0][:, 3] == zero_gamma.beta[3])


def test_the_folded_centre_is_mean_minus_beta_over_scale():
    scale = np.array([2.0, -0.5, 1e-3])
    beta = np.array([1.0, 3.0, -2.0])
    mean = np.array([0.5, -1.0, 4.0])
    var = np.array([1.0, 1.0, 1.0])
    centre = kernels.beta_folded_centre(scale, beta, mean, var)
    x = np.array([0.25, 7.0, -3.0])
    np.testing.assert_allclose(scale * (x - centre), scale * (x - mean) + beta, rtol=1e-14)
    assert kernels.beta_folded_centre(scale, beta, mean, np.array([1.0, 0.0, 1.0])) is None
    assert kernels.beta_folded_centre(scale, beta, np.array([0.5, np.nan, 4.0]), var) is None
    limit = kernels.BETA_FOLD_RATIO
    assert kernels.beta_folded_centre(scale, beta, np.array([0.5, limit, 4.0]), var) is not None
    assert kernels.beta_folded_centre(scale, beta, np.array([0.5, 2 * limit, 4.0]), var) is None


def test_float32_statistics_about_zero_up_to_far_means(numpy_backend, monkeypatch):
    # float32 data with its mean up to 2^8 spreads from 0 takes one pass about 0; further
    # off, the lead rows' shift. Either way the statistics keep every float32 digit.
    passes = []
    original = kernels.combine_moments

    def spy(*args, **kwargs):
        passes.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "combine_moments", spy)
    rng = np.random.default_rng(9)
    for center, one_pass in ((0.0, True), (100.0, True), (3e3, True), (3e5, True)):
        x = (center + rng.standard_normal((4096, 32))).astype(np.float32)
        passes.clear()
        mean, var = kernels.statistics(x, kernels.layout_for(x, (0,)))
        assert (len(passes) == 1) == one_pass
        wide = x.astype(np.longdouble)
        exact_var = ((wide - wide.mean(axis=0)) ** 2).mean(axis=0)
        assert np.max(np.abs(var - exact_var) / exact_var) <= 2.0**-30, center
        spread = np.sqrt(exact_var)
        assert np.max(np.abs(mean - wide.mean(axis=0)) / spread) <= 2.0**-30, center


def test_float32_long_runs_sum_in_float64(numpy_backend):
    # Spatial batch norm over 128 x 128 pixels: each channel's product sums run over 16,384
    # values one term at a time (einsum); in float64 they keep every float32 digit, where
    # float32 accumulation (shown) is far off.
    rng = np.random.default_rng(10)
    shape = (2, 4, 128, 128)
    x = (3.0 + 2.0**-10 * (np.indices(shape).sum(0) % 2) + 0.01
         * rng.standard_normal(shape)).astype(np.float32)
    case = _case("spatial", x, rng.standard_normal(shape))
    _exact_enough(case)
    exact = exact_normalization(case.x, case.gamma, case.beta, case.dout,
                                norm_spec("spatial", shape))
    assert error_in_eps(run_case(case)[2], exact[2], np.float32) <= 1.0
    # The mean accumulated in float32 one term at a time, the rest exact: out is far off.
    mean32 = (np.einsum("nchw->c", case.x) / (2 * 128 * 128)).astype(np.longdouble)
    wide = case.x.astype(np.longdouble)
    centred = wide - mean32[None, :, None, None]
    spread = np.sqrt(((wide - wide.mean(axis=(0, 2, 3), keepdims=True)) ** 2).mean(
        axis=(0, 2, 3), keepdims=True) + np.longdouble(1e-5))
    out = (case.gamma[None, :, None, None] * centred / spread
           + case.beta[None, :, None, None])
    assert error_in_eps(out, exact[0], np.float32) > 8

"""Families the compiled passes got wrong where the textbook is right:
products of three factors that fast-math reordered into an overflow (x ~ 1e100 with dout ~
1e209; dout near the float64 limit with ivar > 1: NaN or inf where the textbook is finite),
and long single-feature columns whose sums ran as one running total per chunk (dgamma,
dbeta tens of eps off where the textbook's pairwise sums are within 2; on both backends).
Each must be within
max(a few eps, 1.5x the textbook's error) of the extended-precision reference.
"""

import math

import numpy as np
import pytest

from benchmarks.exactness import Case, errors_in_eps, run_case
from tinygrad_bn import fast
from tinygrad_bn.fast import norm as fast_norm
from tinygrad_bn.norm import norm_spec

A_FEW_EPS = 8.0


def _case(kind, shape, groups, x_scale, dout_scale, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    spec = norm_spec(kind, shape, groups=groups)
    x = (x_scale * rng.standard_normal(shape)).astype(dtype)
    dout = (dout_scale * rng.standard_normal(shape)).astype(dtype)
    return Case("far magnitudes", kind, x, (1 + 0.5 * rng.standard_normal(spec.param_shape)
                                             ).astype(dtype),
                rng.standard_normal(spec.param_shape).astype(dtype), dout, groups)


def _assert_as_exact(case):
    for together in (False, True):
        with np.errstate(all="ignore"):
            fast_error, textbook_error = errors_in_eps(case, together)
        assert np.isfinite(textbook_error), "the family must be one the textbook gets right"
        assert fast_error <= max(A_FEW_EPS, 1.5 * textbook_error), (together, fast_error,
                                                                    textbook_error)


MAGNITUDES = [(1e100, 1e209), (1e-3, 1e306), (1.0, 1e306)]
SHAPES = [("batch", (256, 300), None, "columns"), ("spatial", (64, 4, 20, 20), None, "columns"),
          ("spatial", (512, 4, 7, 7), None, "columns"), ("layer", (300, 256), None, "rows"),
          ("group", (16, 8, 24, 24), 4, "rows")]


@pytest.mark.parametrize(("x_scale", "dout_scale"), MAGNITUDES)
@pytest.mark.parametrize(("kind", "shape", "groups", "path"), SHAPES,
                         ids=[f"{s[0]} {s[1]}" for s in SHAPES])
def test_far_magnitudes_never_overflow_where_the_textbook_does_not(kind, shape, groups, path,
                                                                   x_scale, dout_scale, compiled):
    case = _case(kind, shape, groups, x_scale, dout_scale)
    spec = norm_spec(kind, shape, groups=groups)
    assert fast_norm._route(case.x, spec)[0] == path
    with fast.disabled(), np.errstate(all="ignore"):
        textbook = run_case(case)
    if not all(np.isfinite(t).all() for t in textbook):
        pytest.skip("the textbook overflows here too (sums of dout past the float64 limit)")
    _assert_as_exact(case)


LONG_COLUMNS = [("batch", (65537, 1), None), ("batch", (300001, 1), None),
                ("batch", (65537, 3), None), ("spatial", (4099, 1, 8, 8), None),
                ("spatial", (4099, 1, 4, 4), None), ("spatial", (70, 1, 64, 64), None)]


@pytest.mark.parametrize(("kind", "shape", "groups"), LONG_COLUMNS,
                         ids=[f"{c[0]} {c[1]}" for c in LONG_COLUMNS])
def test_long_single_feature_columns_sum_as_the_textbook_does(kind, shape, groups, backend):
    # Values 3 + N(0, 1) and dout 1 + N(0, 1): every sum has a large common part, which a
    # running total over thousands of rows rounds at every step.
    rng = np.random.default_rng(5)
    spec = norm_spec(kind, shape, groups=groups)
    case = Case("long column", kind, 3.0 + rng.standard_normal(shape),
                1 + 0.5 * rng.standard_normal(spec.param_shape),
                rng.standard_normal(spec.param_shape), 1.0 + rng.standard_normal(shape), groups)
    _assert_as_exact(case)


def test_passes_never_take_more_threads_than_the_cores_available(monkeypatch):
    # The affinity mask is read again at most once a second (a system call per pass cost
    # small ones a microsecond each): a change is followed within that.
    nk = pytest.importorskip("tinygrad_bn.fast.numba_kernels")
    clock = [0.0]
    monkeypatch.setattr(nk.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(nk._cores, "read_at", -math.inf)
    monkeypatch.setattr(nk._cores, "count", 0)
    monkeypatch.setattr(nk.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert nk._usable(4) == 1
    monkeypatch.setattr(nk.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7},
                        raising=False)
    clock[0] += nk.CORES_TTL / 2
    assert nk._usable(2) == 1  # the reading of half a second ago
    clock[0] += nk.CORES_TTL
    assert nk._usable(2) == min(2, nk.numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("shape", [(129, 1024), (731, 91), (33, 70001)])
def test_layer_rows_taken_in_pairs_give_the_same_bits_on_any_thread_count(shape, compiled,
                                                                         on_thread_counts):
    # The backward takes two rows of layer norm per dgamma, dbeta update; an odd row count per
    # run, or per partial, leaves single rows: none of it may depend on the thread count.
    rng = np.random.default_rng(11)
    case = Case("pairs", "layer", 3 + rng.standard_normal(shape),
                1 + 0.5 * rng.standard_normal(shape[1:]), rng.standard_normal(shape[1:]),
                rng.standard_normal(shape))
    assert fast_norm._route(case.x, norm_spec("layer", shape))[0] == "rows"
    first, *others = on_thread_counts(case, (1, 2, 3))
    for other in others:
        for a, b in zip(first, other, strict=True):
            assert np.array_equal(a, b)
    _assert_as_exact(case)


def test_passes_below_the_parallel_size_take_one_thread(compiled):
    # Below 2^17 elements one thread (a second one's wake-up costs more than it saves), above
    # it the configured count, on every path.
    from tinygrad_bn.fast import kernels

    kernels.set_num_threads(2)
    for kind, shape, expected in [("batch", (127, 1024), 1), ("batch", (128, 1024), 2),
                                  ("batch", (1024, 1024), 2), ("spatial", (8, 64, 16, 16), 2),
                                  ("layer", (127, 1024), 1), ("layer", (256, 1024), 2)]:
        x = np.zeros(shape)
        assert fast_norm._route(x, norm_spec(kind, shape))[0] in ("columns", "rows")
        assert fast_norm._threads_for(x) == expected, (kind, shape)

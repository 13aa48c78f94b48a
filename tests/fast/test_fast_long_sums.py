"""Long sums that a running total gets wrong: each statistic's values +-a alternating along
its axes (a^2 under half an ulp of 1e12), with one pair 1e6 out each way among them (the mean stays 0).
Every small term added to a running total near the pair's squares rounds away the same way:
summed one term after another, thousands of them shift the variance by tens of eps, where
the textbook's pairwise sums are within a few. With dout = the same signs (1e9 times them at
the pair), every dout * xhat is the same small number but two: the backward's sums of
dout * xhat are at risk in the same way. Every pass (the small inputs' serial call, the row
passes; the one-call forward and the statistics apart; on both backends) must be within max(a few eps, 1.5x
the textbook's error).
"""

import numpy as np
import pytest

from benchmarks.exactness import Case, error_in_eps, exact_normalization, run_case
from tinygrad_bn import fast
from tinygrad_bn.fast import norm as fast_norm
from tinygrad_bn.norm import norm_spec

A_FEW_EPS = 8.0
SMALL = float(np.sqrt(0.49 * np.spacing(1e12)))

_ALL = slice(None)
CASES = [  # kind, shape, groups, where the pair sits (1e6 out each way), the path with numba
    ("layer", (64, 8192), None, ((_ALL, 4096), (_ALL, 4097)), "rows"),
    ("layer", (64, 16000), None, ((_ALL, 8000), (_ALL, 8001)), "rows"),
    ("layer", (2, 32768), None, ((_ALL, 16384), (_ALL, 16385)), "small"),
    ("group", (2, 1, 128, 256), 1, ((_ALL, _ALL, 64, 100), (_ALL, _ALL, 64, 101)), "small"),
    ("group", (8, 4, 128, 128), 2, ((_ALL, _ALL, 64, 100), (_ALL, _ALL, 64, 101)), "rows"),
    ("spatial", (2, 1, 128, 256), None, ((_ALL, _ALL, 64, 100), (_ALL, _ALL, 64, 101)),
     "small"),
    ("spatial", (2, 2, 128, 128), None, ((_ALL, _ALL, 64, 100), (_ALL, _ALL, 64, 101)),
     "small"),
    ("batch", (65536, 1), None, ((32768,), (32769,)), "small"),
]

# Without numba, the same inputs take the blocked numpy passes.
NUMPY_PATH = {"layer": "blocked rows", "group": "blocked rows", "spatial": "blocked",
              "batch": "blocked"}


def _case(kind, shape, groups, pair, dout_in_step):
    spec = norm_spec(kind, shape, groups=groups)
    grouped = spec.grouped_shape or shape
    # +-1 alternating along the reduced axes (the same for every statistic)
    index = np.indices(grouped)
    sign = (1.0 - 2.0 * (sum(index[a] for a in spec.reduce_axes) % 2)).reshape(shape)
    x = SMALL * sign
    rng = np.random.default_rng(0)
    dout = sign.copy()
    for at in pair:  # neighbours along the last reduced axis: of opposite signs, mean 0
        x[at] += 1e6 * sign[at]
        dout[at] *= 1e9
    if dout_in_step:
        gamma = np.ones(spec.param_shape)
    else:
        gamma, dout = 1 + 0.5 * rng.standard_normal(spec.param_shape), rng.standard_normal(shape)
    return Case("long sums", kind, x, gamma, rng.standard_normal(spec.param_shape), dout, groups)


@pytest.mark.parametrize("dout_in_step", [False, True], ids=["random dout", "dout in step"])
@pytest.mark.parametrize(("kind", "shape", "groups", "pair", "path"), CASES,
                         ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_long_sums_with_a_far_pair_keep_their_digits(kind, shape, groups, pair, path,
                                                     dout_in_step, backend):
    case = _case(kind, shape, groups, pair, dout_in_step)
    taken = fast_norm._route(case.x, norm_spec(kind, shape, groups=groups))[0]
    assert taken == (path if backend == "numba" else NUMPY_PATH[kind])
    spec = norm_spec(kind, shape, groups=groups)
    exact = exact_normalization(case.x, case.gamma, case.beta, case.dout, spec)
    # dx at the pair is a difference of two near-equal values in every formulation (their
    # dout * xhat is nearly all of the sum): judged away from them
    away = np.ones(shape, bool)
    for at in pair:
        away[at] = False
    with fast.disabled():
        textbook = run_case(case)
    for together in (False, True):
        result = run_case(case, together)
        for name, r, t, e in zip(("out", "dx", "dgamma", "dbeta"), result, textbook, exact):
            if name == "dx":
                r, t, e = r[away], t[away], e[away]
            error, bound = (error_in_eps(v, e, np.float64) for v in (r, t))
            assert error <= max(A_FEW_EPS, 1.5 * bound), (together, name, error, bound)

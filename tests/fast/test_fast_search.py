"""A randomized search for inputs on which the fast layer is less exact than the textbook.

Each draw picks a normalization (batch, spatial, layer, group), a shape (from one or two
values per statistic up to sizes above every threshold of the fast layer), a dtype, a
magnitude for x and one for dout (from the underflow range to the overflow range), an
offset of x's mean from zero, eps (the default, the smallest float64, or 1) and a memory
layout (contiguous, reversed, sliced, transposed), and compares the fast path and the
textbook with the reference of `benchmarks/exactness.py` (60 digits for small inputs, long
double above): the fast error must be within max(8 eps, 1.5x the textbook's). One kind of
miss is known and reported as an expected failure: dgamma or dbeta whose sums cancel to a
hundredth of their terms, where the fast sums are as exact as the textbook's but not within
1.5x of it by chance (`_cancelling_sums`).

CI runs a brief search (a fixed seed, a dozen draws per backend). A longer one runs on demand:

    TINYGRAD_BN_EXACT_SEARCH=2000 TINYGRAD_BN_EXACT_SEED=7 \\
        python -m pytest -q tests/fast/test_fast_search.py

(TINYGRAD_BN_EXACT_SEARCH: the number of draws per backend; TINYGRAD_BN_EXACT_SEED: the
seed, printed with every failing draw so that it can be replayed alone.)
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks.exactness import Case, error_in_eps, errors_in_eps, reference, run_case
from tinygrad_bn import fast
from tinygrad_bn.norm import norm_spec

A_FEW_EPS = 8.0
DRAWS = int(os.environ.get("TINYGRAD_BN_EXACT_SEARCH", "12"))
SEED = int(os.environ.get("TINYGRAD_BN_EXACT_SEED", "0"))
MAX_ELEMENTS = 1 << 18  # the reference and the textbook stay quick up to here
CANCELLING = 100  # sum |terms| / |sum| past which a sum's error is chance (`_cancelling_sums`)


def _shape(rng: np.random.Generator, kind: str) -> tuple[tuple[int, ...], int | None]:
    # Small statistic counts are drawn as often as large sizes: they are where dx cancels.
    small = rng.random() < 0.4
    if kind == "batch":
        rows = int(rng.integers(2, 5)) if small else int(rng.integers(2, 20000))
        return (rows, int(rng.integers(1, 40))), None
    if kind == "layer":
        width = int(rng.integers(2, 5)) if small else int(rng.integers(2, 5000))
        return (int(rng.integers(1, 300)), width), None
    side = 1 if small else int(rng.integers(1, 33))
    batch = int(rng.integers(2, 5)) if small else int(rng.integers(1, 128))
    channels = int(rng.choice([1, 2, 4, 8, 16]))
    if kind == "spatial":
        return (batch, channels, side, side), None
    groups = int(rng.choice([g for g in (1, 2, 4, 8) if channels % g == 0]))
    return (batch, channels, side, side), groups


def _layout(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    choice = int(rng.integers(0, 5))
    if choice == 1:
        return x[::-1]
    if choice == 2 and x.shape[-1] > 1:
        wide = np.repeat(x, 2, axis=-1)
        return wide[..., ::2]
    if choice == 3 and x.ndim == 2:
        return np.asfortranarray(x)
    if choice == 4 and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    return x


def draw(seed: int, index: int) -> Case:
    """Draw number `index` of the search with `seed`: one random input."""
    rng = np.random.default_rng([seed, index])
    kind = str(rng.choice(["batch", "spatial", "layer", "group"]))
    shape, groups = _shape(rng, kind)
    while int(np.prod(shape)) > MAX_ELEMENTS:
        shape = (max(1, shape[0] // 2), *shape[1:])
    dtype = np.float32 if rng.random() < 0.3 else np.float64
    if dtype == np.float32:
        x_exp, dout_exp = rng.uniform(-30, 30), rng.uniform(-30, 30)
    else:
        x_exp, dout_exp = rng.uniform(-160, 150), rng.uniform(-155, 307)
        if rng.random() < 0.5:  # half the draws near ordinary sizes
            x_exp, dout_exp = rng.uniform(-3, 3), rng.uniform(-3, 3)
    scale = 10.0**x_exp
    offset = scale * float(rng.choice([0.0, 1.0, 3.0, 1e4, 1e8 if dtype == np.float64 else 1e3]))
    with np.errstate(over="ignore"):
        x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
        dout = (10.0**dout_exp * rng.standard_normal(shape)).astype(dtype)
    spec = norm_spec(kind, shape, groups=groups)
    gamma = (1 + 0.5 * rng.standard_normal(spec.param_shape)).astype(dtype)
    beta = rng.standard_normal(spec.param_shape).astype(dtype)
    eps = float(rng.choice([1e-5, 1e-5, 1e-5, 5e-324 if dtype == np.float64 else 1e-30, 1.0]))
    return Case(f"search {seed}:{index}", kind, _layout(rng, x), gamma, beta, dout, groups, eps)


def _cancelling_sums(case: Case, failing: set[str]) -> bool:
    # dgamma = sum(dy * xhat) and dbeta = sum(dy) whose terms cancel to a hundredth of
    # their magnitudes: there the fast passes' sums (blocks carried, reassociated inside) and
    # the textbook's pairwise ones are of the same quality, and their errors differ by
    # chance by more than 1.5x. Only a sum compensated term by term would keep the promise.
    if not failing or not failing <= {"dgamma", "dbeta"}:
        return False
    spec = norm_spec(case.kind, case.x.shape, eps=case.eps, groups=case.groups)
    wide = spec.grouped(case.x.astype(np.longdouble))
    centred = wide - wide.mean(axis=spec.reduce_axes, keepdims=True)
    xhat = (centred / np.sqrt((centred**2).mean(axis=spec.reduce_axes, keepdims=True)
                              + np.longdouble(case.eps))).reshape(spec.x_shape)
    dout = case.dout.astype(np.longdouble)
    axes = spec.param_sum_axes
    with np.errstate(all="ignore"):
        factors = [np.abs(t).sum(axis=axes) / np.abs(t.sum(axis=axes))
                   for t in (dout, dout * xhat)]
    return bool(max(np.nanmax(f) for f in factors) > CANCELLING)


@pytest.mark.parametrize("together", [False, True], ids=["apart", "one call"])
def test_random_inputs_are_as_exact_as_the_textbook(together, backend):
    failures, chance = [], []
    for index in range(DRAWS):
        case = draw(SEED + (1 if together else 0), index)
        fast_error, textbook_error = errors_in_eps(case, together)
        if fast_error > max(A_FEW_EPS, 1.5 * textbook_error):
            found = (case.family, case.kind, case.x.shape, case.x.dtype.name, case.eps,
                     fast_error, textbook_error)
            if _cancelling_sums(case, _failing_outputs(case, together)):
                chance.append(found)
            else:
                failures.append(found)
    assert not failures, failures[:5]
    if chance:
        pytest.xfail(f"sums that cancel to a hundredth, no more exact than the textbook's "
                     f"({chance[:3]})")


def _failing_outputs(case: Case, together: bool) -> set[str]:
    exact = reference(case)
    fast_results = run_case(case, together)
    with fast.disabled():
        textbook = run_case(case, together)
    dtype = case.x.dtype
    return {name for name, f, t, e in zip(("out", "dx", "dgamma", "dbeta"), fast_results,
                                          textbook, exact)
            if error_in_eps(f, e, dtype) > max(A_FEW_EPS, 1.5 * error_in_eps(t, e, dtype))}


def test_the_search_draws_every_kind_and_far_magnitudes():
    drawn = [draw(SEED, index) for index in range(200)]
    assert {case.kind for case in drawn} == {"batch", "spatial", "layer", "group"}
    assert {case.x.dtype for case in drawn} == {np.dtype(np.float32), np.dtype(np.float64)}
    assert any(case.eps == 5e-324 for case in drawn)
    assert any(norm_spec(c.kind, c.x.shape, groups=c.groups).count <= 3 for c in drawn)
    with np.errstate(all="ignore"):
        assert any(np.max(np.abs(c.dout)) > 1e250 for c in drawn)
        assert any(0 < np.max(np.abs(c.x)) < 1e-100 for c in drawn)

"""How exact the fused normalizations are on adversarial inputs, fast path vs textbook.

    python -m benchmarks.exactness [--backend numpy|numba|both]

Each family is a set of inputs chosen to break a formula that is exact only on easy data:
means far from zero (the variance cancels), two-value columns, batches of two, two values
per statistic (dx cancels), magnitudes of x and of dout near the dtype's overflow and
underflow, zeros with the smallest eps, long single-feature columns, reversed and sliced
strides, and every size around each threshold of the fast layer. For each input, the fast
path (whatever the library dispatches to) and the textbook core (`fast.disabled()`) are
compared with an extended-precision reference (from the same float inputs). The
error is normwise (max |a - b| / max(|a| + |b|)) in units of the dtype's eps; a NaN or inf
where the reference is finite counts as infinitely wrong. "over" counts the inputs where the
fast error breaks the promise fast <= max(8 eps, 1.5x the textbook's). The reference is
worked to 60 digits (mpmath) for inputs up to 4,096 elements, in long double above.

The same families and the same measure are the equivalence suite's (tests/fast/test_fast_exact.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Case", "FAMILIES", "cases", "reference", "error_in_eps", "errors_in_eps", "run_case",
           "multiprecision_normalization", "exact_normalization", "mul_case"]


@dataclass
class Case:
    """One adversarial input: the kind of normalization, x (any layout), gamma, beta, dout."""

    family: str
    kind: str
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    dout: np.ndarray
    groups: int | None = None
    eps: float = 1e-5


def _params(rng: np.random.Generator, kind: str, shape: tuple[int, ...], dtype) -> tuple:
    count = shape[1] if kind in ("batch", "spatial", "group") else int(np.prod(shape[1:]))
    pshape = (shape[1],) if kind != "layer" else shape[1:]
    del count
    gamma = (1 + 0.5 * rng.standard_normal(pshape)).astype(dtype)
    beta = rng.standard_normal(pshape).astype(dtype)
    return gamma, beta


def _make(family: str, kind: str, x: np.ndarray, rng: np.random.Generator,
          groups: int | None = None, dout_scale: float = 1.0) -> Case:
    gamma, beta = _params(rng, kind, x.shape, x.dtype)
    dout = (dout_scale * rng.standard_normal(x.shape)).astype(x.dtype)
    if kind == "group" and groups is None:
        groups = 2
    return Case(family, kind, x, gamma, beta, dout, groups)


_SHAPES = {  # a small and a large shape per kind (large: above every fast threshold)
    "batch": [(64, 4), (4096, 20)],
    "spatial": [(4, 3, 5, 5), (64, 4, 16, 16)],
    "layer": [(8, 64), (512, 300)],
    "group": [(2, 4, 6, 6), (16, 8, 24, 24)],
}


def _around(family: str, dtype, center: float, spread: float, seed: int) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for kind, shapes in _SHAPES.items():
        for shape in shapes:
            x = (center + spread * rng.standard_normal(shape)).astype(dtype)
            yield _make(family, kind, x, rng)


def _alternating(family: str, dtype, low: float, step: float, seed: int) -> Iterator[Case]:
    # Every column holds two values, low and low + step, alternating along the batch.
    rng = np.random.default_rng(seed)
    for kind, shapes in _SHAPES.items():
        for shape in shapes:
            pattern = (np.indices(shape).sum(axis=0) % 2).astype(np.float64)
            yield _make(family, kind, (low + step * pattern).astype(dtype), rng)


def _pairs(family: str, dtype, center: float, seed: int) -> Iterator[Case]:
    # Batches of two (N = 2 for batch norm): the normalized values are exactly +-1.
    rng = np.random.default_rng(seed)
    for shape in [(2, 4), (2, 32768), (2, 1000)]:
        x = (center + rng.standard_normal(shape)).astype(dtype)
        yield _make(family, "batch", x, rng)
    x = (center + rng.standard_normal((2, 3, 1, 1))).astype(dtype)
    yield _make(family, "spatial", x, rng)
    x = (center + rng.standard_normal((64, 2))).astype(dtype)
    yield _make(family, "layer", x, rng)


def _magnitude(family: str, dtype, scale: float, seed: int) -> Iterator[Case]:
    # Values of size `scale` spread over their own size (squares overflow or underflow).
    rng = np.random.default_rng(seed)
    for kind, shapes in _SHAPES.items():
        for shape in shapes:
            x = (scale * rng.standard_normal(shape)).astype(dtype)
            yield _make(family, kind, x, rng)


def _strides(family: str, dtype, center: float, seed: int) -> Iterator[Case]:
    # The same values in other memory layouts: reversed, sliced, transposed, Fortran order.
    rng = np.random.default_rng(seed)
    for shape in [(2, 32768), (4096, 20), (300, 7)]:
        base = (center + rng.standard_normal(shape)).astype(dtype)
        wide = np.zeros((shape[0], 2 * shape[1]), dtype)
        wide[:, ::2] = base
        for x in (base[::-1], base[:, ::-1], wide[:, ::2], np.asfortranarray(base),
                  np.ascontiguousarray(base.T).T):
            yield _make(family, "batch", x, rng)
    base = (center + rng.standard_normal((64, 4, 16, 16))).astype(dtype)
    for x in (base[::-1], base[:, :, ::-1], base.transpose(0, 1, 3, 2)):
        yield _make(family, "spatial", x, rng)
        yield _make(family, "group", x, rng)
    base = (center + rng.standard_normal((512, 300))).astype(dtype)
    for x in (base[::-1, ::-1], np.asfortranarray(base)):
        yield _make(family, "layer", x, rng)


def _thresholds(family: str, dtype, center: float, seed: int) -> Iterator[Case]:
    # Every size around each threshold of the fast layer (65,536 elements, 64 KiB).
    rng = np.random.default_rng(seed)
    for features in (16, 7):
        boundary = -(-(1 << 16) // features)
        for rows in (boundary - 1, boundary, boundary + 1):
            x = (center + rng.standard_normal((rows, features))).astype(dtype)
            yield _make(family, "batch", x, rng)
    for rows in (255, 256, 257):
        x = (center + rng.standard_normal((rows, 256))).astype(dtype)
        yield _make(family, "layer", x, rng)
    for batch in (63, 64, 65):
        x = (center + rng.standard_normal((batch, 4, 16, 16))).astype(dtype)
        yield _make(family, "spatial", x, rng)


def _two_values(family: str, seeds: int) -> Iterator[Case]:
    # Two (or three) values per statistic, N(0, 1), default eps: dx is a difference of nearly
    # equal terms (1 - xhat^2 = eps / (var + eps)), so every rounding shows.
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        yield _make(family, "spatial", rng.standard_normal((2, 1, 1, 1)), rng)
        yield _make(family, "group", rng.standard_normal((1, 4, 1, 1)), rng, groups=2)
        yield _make(family, "layer", rng.standard_normal((3, 2)), rng)
        yield _make(family, "layer", rng.standard_normal((3, 3)), rng)
        yield _make(family, "batch", rng.standard_normal((2, 5)), rng)


_GRADIENT_SHAPES = [("batch", (256, 300), None), ("batch", (16, 4), None),
                    ("batch", (4096, 20), None), ("spatial", (16, 4, 16, 16), None),
                    ("spatial", (4, 3, 5, 5), None), ("spatial", (64, 4, 16, 16), None),
                    ("group", (16, 8, 16, 16), 4), ("group", (16, 8, 24, 24), 8),
                    ("group", (2, 4, 6, 6), 2), ("layer", (256, 300), None),
                    ("layer", (8, 64), None)]


def _gradients(family: str, x_scale: float, dout_scales: tuple[float, ...], seed: int
               ) -> Iterator[Case]:
    # x of size x_scale, dout of each size in dout_scales: their products (dy * (x - mean))
    # leave float64's range where dy * xhat does not, or the sums of dy do near the top.
    rng = np.random.default_rng(seed)
    for kind, shape, groups in _GRADIENT_SHAPES:
        for dout_scale in dout_scales:
            x = x_scale * rng.standard_normal(shape)
            yield _make(family, kind, x, rng, groups, dout_scale)


def _long_columns(family: str, seed: int) -> Iterator[Case]:
    # One feature: each statistic and dgamma, dbeta are sums of one long column.
    rng = np.random.default_rng(seed)
    for kind, shape in (("batch", (65537, 1)), ("batch", (1000000, 1)),
                        ("spatial", (64, 1, 64, 64))):
        for offset, dout_offset in ((3.0, 0.0), (0.0, 1.0)):
            x = offset + rng.standard_normal(shape)
            case = _make(family, kind, x, rng)
            case.dout = case.dout + dout_offset
            yield case


def _zeros(family: str, eps: float) -> Iterator[Case]:
    # All-zero x with the smallest eps: var + eps = eps, ivar = 1 / sqrt(eps) ~ 4.5e161,
    # whose square leaves float64's range.
    rng = np.random.default_rng(18)
    for kind, shapes in _SHAPES.items():
        for shape in shapes:
            case = _make(family, kind, np.zeros(shape), rng)
            case.eps = eps
            yield case


F32, F64 = np.float32, np.float64
FAMILIES: dict[str, Callable[[], Iterator[Case]]] = {
    "offset 1e4 float32": lambda: _around("offset 1e4 float32", F32, 1e4, 1.0, 1),
    "offset 1e6 float32": lambda: _around("offset 1e6 float32", F32, 1e6, 1.0, 2),
    "offset 3 float64": lambda: _around("offset 3 float64", F64, 3.0, 1.0, 3),
    "offset 1e8 float64": lambda: _around("offset 1e8 float64", F64, 1e8, 1.0, 4),
    "alternating 1e6, 1e6+1/16 float32":
        lambda: _alternating("alternating 1e6, 1e6+1/16 float32", F32, 1e6, 0.0625, 5),
    "alternating 1e8, 1e8+1e-6 float64":
        lambda: _alternating("alternating 1e8, 1e8+1e-6 float64", F64, 1e8, 2.0**-20, 6),
    "N = 2 near 1e6 float32": lambda: _pairs("N = 2 near 1e6 float32", F32, 1e6, 7),
    "N = 2 near 1e8 float64": lambda: _pairs("N = 2 near 1e8 float64", F64, 1e8, 8),
    "|x| ~ 1e30 float32": lambda: _magnitude("|x| ~ 1e30 float32", F32, 1e30, 9),
    "|x| ~ 1e37 float32": lambda: _magnitude("|x| ~ 1e37 float32", F32, 1e37, 10),
    "|x| ~ 1e200 float64": lambda: _magnitude("|x| ~ 1e200 float64", F64, 1e200, 11),
    "|x| ~ 1e-30 float32": lambda: _magnitude("|x| ~ 1e-30 float32", F32, 1e-30, 12),
    "|x| ~ 1e-160 float64": lambda: _magnitude("|x| ~ 1e-160 float64", F64, 1e-160, 13),
    "strides at 1e6 float32": lambda: _strides("strides at 1e6 float32", F32, 1e6, 14),
    "strides at 1e8 float64": lambda: _strides("strides at 1e8 float64", F64, 1e8, 15),
    "sizes around thresholds float32":
        lambda: _thresholds("sizes around thresholds float32", F32, 100.0, 16),
    "sizes around thresholds float64":
        lambda: _thresholds("sizes around thresholds float64", F64, 100.0, 17),
    "two values per statistic float64": lambda: _two_values("two values per statistic float64", 40),
    "x ~ 1e100, dout ~ 1e209 float64":
        lambda: _gradients("x ~ 1e100, dout ~ 1e209 float64", 1e100, (1e209,), 19),
    "|dout| ~ 1e306-1e307 float64":
        lambda: _gradients("|dout| ~ 1e306-1e307 float64", 1.0, (1e306, 1e307), 20),
    "x ~ 1e-160, dout ~ 1e-155 float64":
        lambda: _gradients("x ~ 1e-160, dout ~ 1e-155 float64", 1e-160, (1e-155,), 21),
    "x ~ 1e111, dout ~ 1e-152 float64":
        lambda: _gradients("x ~ 1e111, dout ~ 1e-152 float64", 1e111, (1e-152,), 23),
    "long single-feature columns float64":
        lambda: _long_columns("long single-feature columns float64", 22),
    "zeros, eps = 5e-324 float64": lambda: _zeros("zeros, eps = 5e-324 float64", 5e-324),
}


def cases(family: str) -> list[Case]:
    """The inputs of one family."""
    return list(FAMILIES[family]())


def _spec(case: Case):
    from tinygrad_bn.norm import norm_spec

    return norm_spec(case.kind, case.x.shape, eps=case.eps, groups=case.groups)


MULTIPRECISION_MAX_ELEMENTS = 4096  # up to this, the reference is worked to 60 digits (mpmath)
DIGITS = 60


def reference(case: Case) -> tuple[np.ndarray, ...]:
    """out, dx, dgamma, dbeta of `case`: to 60 digits (mpmath) for small inputs, in long
    double for larger ones; returned as long double arrays."""
    if case.x.size <= MULTIPRECISION_MAX_ELEMENTS:
        return multiprecision_normalization(case.x, case.gamma, case.beta, case.dout, _spec(case))
    return exact_normalization(case.x, case.gamma, case.beta, case.dout, _spec(case))


def multiprecision_normalization(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                                 dout: np.ndarray, spec: Any) -> tuple[np.ndarray, ...]:
    """out, dx (x's shape), dgamma, dbeta (gamma's shape) worked to 60 significant digits
    from the float inputs, then rounded to long double. Where the backward cancels (two
    values per statistic: dx is a difference of nearly equal terms), long double's 11 bits
    beyond float64 are not enough to judge a float64 result; 60 digits are."""
    import mpmath

    with mpmath.workdps(DIGITS):
        def wide(a: np.ndarray) -> np.ndarray:
            flat = [mpmath.mpf(float(v)) for v in np.asarray(a, np.float64).reshape(-1)]
            return np.array(flat, dtype=object).reshape(np.shape(a))

        sqrt = np.frompyfunc(mpmath.sqrt, 1, 1)
        axes, count = spec.reduce_axes, mpmath.mpf(spec.count)
        xl = spec.grouped(wide(x))
        gl = wide(gamma).reshape(spec.param_bshape)
        dl = wide(dout)
        xmu = xl - xl.sum(axis=axes, keepdims=True) / count
        ivar = 1 / sqrt((xmu * xmu).sum(axis=axes, keepdims=True) / count
                        + mpmath.mpf(float(spec.eps)))
        xhat = (xmu * ivar).reshape(spec.x_shape)
        g = spec.grouped(dl * gl)
        xg = spec.grouped(xhat)
        dx = ivar * (g - g.sum(axis=axes, keepdims=True) / count
                     - xg * (g * xg).sum(axis=axes, keepdims=True) / count)
        sum_axes = spec.param_sum_axes
        out = gl * xhat + wide(beta).reshape(spec.param_bshape)
        results = (out, dx.reshape(spec.x_shape), (dl * xhat).sum(axis=sum_axes),
                   dl.sum(axis=sum_axes))
        shapes = (spec.x_shape, spec.x_shape, gamma.shape, gamma.shape)
        return tuple(_long_double(r).reshape(shape) for r, shape in zip(results, shapes))


def _long_double(values: np.ndarray) -> np.ndarray:
    # Through the decimal string: float() would round to float64 (and overflow at 1e308).
    import mpmath

    flat = np.asarray(values, dtype=object).reshape(-1)
    return np.array([np.longdouble(mpmath.nstr(v, 24, strip_zeros=False)) for v in flat],
                    dtype=np.longdouble)


def exact_normalization(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dout: np.ndarray,
                        spec: Any) -> tuple[np.ndarray, ...]:
    """out, dx (x's shape), dgamma, dbeta (gamma's shape) in extended precision (x86 long
    double) from the float inputs, with two-pass statistics: the reference fast paths are
    judged by."""
    L = np.longdouble
    xl = spec.grouped(x.astype(L))
    gl = gamma.astype(L).reshape(spec.param_bshape)
    dl = dout.astype(L)
    axes = spec.reduce_axes
    xmu = xl - xl.mean(axis=axes, keepdims=True)
    ivar = 1 / np.sqrt((xmu * xmu).mean(axis=axes, keepdims=True) + L(spec.eps))
    xhat = (xmu * ivar).reshape(spec.x_shape)
    g = spec.grouped(dl * gl)
    xg = spec.grouped(xhat)
    dx = ivar * (g - g.mean(axis=axes, keepdims=True)
                    - xg * (g * xg).mean(axis=axes, keepdims=True))
    sum_axes = spec.param_sum_axes
    out = gl * xhat + beta.astype(L).reshape(spec.param_bshape)
    return (out, dx.reshape(spec.x_shape), (dl * xhat).sum(axis=sum_axes).reshape(gamma.shape),
            dl.sum(axis=sum_axes).reshape(gamma.shape))


def run_case(case: Case, together: bool = False) -> tuple[np.ndarray, ...]:
    """out, dx, dgamma, dbeta through the fused op's dispatchers (fast path where enabled).

    The forward is the statistics, then `forward` (as with given statistics); `together`
    takes it as a training-mode node does instead, output and statistics in one call.
    """
    from tinygrad_bn.norm import FusedNorm

    spec = _spec(case)
    with np.errstate(all="ignore"):
        if together:
            out, mean, var = FusedNorm.forward_with_statistics(case.x, case.gamma, case.beta,
                                                               spec=spec)
        else:
            mean, var = FusedNorm.statistics(case.x, spec)
            out = FusedNorm.forward(case.x, case.gamma, case.beta, spec=spec, mean=mean,
                                    var=var)
        dx, dgamma, dbeta = FusedNorm.backward(case.dout, case.x, case.gamma, case.beta, out,
                                               spec=spec, mean=mean, var=var)
    return out, dx, dgamma, dbeta


def error_in_eps(result: np.ndarray, exact: np.ndarray, dtype) -> float:
    """Normwise error of `result` against `exact`, in eps of `dtype` (inf for a NaN/inf miss)."""
    with np.errstate(all="ignore"):
        r = np.asarray(result, np.longdouble)
        e = np.asarray(exact, np.longdouble)
        finite = np.isfinite(e)
        if not np.all(np.isfinite(r) | ~finite):
            return float("inf")
        if not np.all(finite):  # the reference itself overflowed: compare where it did not
            r, e = r[finite], e[finite]
        if r.size == 0:
            return 0.0
        scale = np.max(np.abs(r) + np.abs(e))
        if scale == 0:
            return 0.0
        tiny = np.finfo(dtype).tiny
        return float(np.max(np.abs(r - e)) / max(scale, tiny) / np.finfo(dtype).eps)


def errors_in_eps(case: Case, together: bool = False) -> tuple[float, float]:
    """(fast path, textbook) worst error over out, dx, dgamma, dbeta, in eps of x's dtype
    (`together`: the forward in one call, as `run_case` says)."""
    from tinygrad_bn import fast

    exact = reference(case)
    fast_result = run_case(case, together)
    with fast.disabled():
        textbook = run_case(case, together)
    dtype = case.x.dtype
    worst = [max(error_in_eps(r, e, dtype) for r, e in zip(results, exact))
             for results in (fast_result, textbook)]
    return worst[0], worst[1]


def mul_case(dtype: Any = np.float32) -> tuple[float, float]:
    """(fast, textbook) error in eps of the gradient of a (1,) operand of a (2^20, 1)
    broadcast product of 0.1s: a sum of 2^20 products, as `Mul`'s VJP forms it."""
    from tinygrad_bn import fast
    from tinygrad_bn.core.ops import Mul

    rows = 1 << 20
    upstream = np.full((rows, 1), 0.1, dtype)
    a = np.ones((rows, 1), dtype)
    b = np.ones((1,), dtype)
    exact = np.longdouble(upstream[0, 0]) * rows
    fast_value = Mul.backward(upstream, a, b, a * b)[1]
    with fast.disabled():
        textbook = Mul.backward(upstream, a, b, a * b)[1]
    eps = np.finfo(dtype).eps
    return tuple(float(abs(np.longdouble(v[0]) - exact) / exact / eps)
                 for v in (fast_value, textbook))


def table(backend: str) -> list[str]:
    """Rows `| family | cases | fast | textbook | over |` for one backend: the worst error in
    eps of each, and how many inputs break the promise fast <= max(8 eps, 1.5x textbook)."""
    from tinygrad_bn import fast

    fast.use_numba(backend == "numba")
    rows = []
    for family in FAMILIES:
        worst_fast = worst_textbook = 0.0
        over = 0
        found = cases(family)
        for case in found:
            f, t = errors_in_eps(case)
            worst_fast, worst_textbook = max(worst_fast, f), max(worst_textbook, t)
            over += not f <= max(PROMISE_EPS, 1.5 * t)
        rows.append(f"| {family} | {len(found)} | {_eps(worst_fast)} | {_eps(worst_textbook)} "
                    f"| {over} |")
    for dtype in (np.float32, np.float64):
        f, t = mul_case(dtype)
        over = int(not f <= max(PROMISE_EPS, 1.5 * t))
        rows.append(f"| Mul VJP, sum of 2^20 products {np.dtype(dtype).name} | 1 | {_eps(f)} "
                    f"| {_eps(t)} | {over} |")
    return rows


PROMISE_EPS = 8.0  # the fast error may reach max(this, 1.5x the textbook's)


def _eps(value: float) -> str:
    return "NaN/inf" if value == float("inf") else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.exactness", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["numpy", "numba", "both"], default="both")
    args = parser.parse_args(argv)
    backends = ["numpy", "numba"] if args.backend == "both" else [args.backend]
    for backend in backends:
        print(f"\nFast path on the {backend} backend: worst error in eps, fast vs textbook\n")
        print("| family | cases | fast | textbook | over |\n|---|---:|---:|---:|---:|")
        for row in table(backend):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Blocked batch norm for large inputs: the closed form of `norm/fused.py`, reorganized.

Used where x is C-contiguous, large, and reduced over its leading axes and possibly its
trailing ones (batch norm of (N, D) over 0, of (N, C, H, W) over (0, 2, 3)). x is viewed
as (A, K) or (A, K, B), with the statistics over A (and B) for each feature k. Also the
shared pieces of the compiled passes (`numba_kernels.py`): the layouts, the shift and the
combination of the shifted sums.

Why it is fast: every pass walks x in blocks of about a megabyte, so the few numpy
calls per block run on data in cache; the statistics take one pass (the sums of x - shift
and of its square) instead of two; nothing of x's size is allocated besides the result;
the blocks are split between threads (numpy releases the GIL).

Why it is exact (at least as the textbook, on every input the textbook handles):
- every statistic, sum and forward output is worked in float64 (float32 data is converted
  into a float64 scratch block as it is centred), and results are rounded once to x's dtype;
- float32 dx is the one exception: it is formed in float32 (`dx_float32`, `row_dx_float32`:
  a third of the float64 work) only where an error bound taken from the float64 sums
  (`float32_dx_bound`: a few eps32 normwise per statistic, nothing out of float32's range)
  holds, which rules out the inputs where float32 would lose digits (dx cancelling out of
  dy, x - mean past float32's range); everywhere else it is worked in float64 like the rest;
- the statistics are sums of d = x - shift with the shift the mean of a few leading rows,
  combined as mean = shift + mean(d), var = mean(d^2) - mean(d)^2. That cancels only when
  the shift is far from the mean (|mean(d)| above the spread): then a second pass about
  the mean itself follows (`combine_moments`);
- the backward works with xhat = (x - mean) * ivar,
      dx = gamma * ivar * (dy - mean(dy) - xhat * mean(dy * xhat)),
  the textbook's closed form for batch norm (gamma is constant along the reduced axes), so
  a variance that overflows to inf gives the textbook's ivar = 0 and dx = 0, not inf * 0;
- each block's sums are kept apart and added in block order, so the result does not
  depend on the thread count.

The row passes (layer and group norm, below) follow the same rules by blocks of whole samples.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Layout", "RowLayout", "layout_for", "row_layout_for", "statistics", "normalize",
           "backward", "row_statistics", "row_normalize", "row_backward", "set_num_threads",
           "num_threads", "MIN_ELEMENTS", "lead_shift", "combine_moments"]

MIN_ELEMENTS = 1 << 16      # below this the closed form in plain numpy is as fast
# About 1 MB per block (float64): fewer numpy calls per pass (each costs microseconds)
# matter more than staying inside a 512 KB L2 (measured: 1 MB faster than 0.25 or 0.5 MB).
BLOCK_BYTES = 1 << 20
LEAD_ROWS = 16              # rows whose mean is the shift of the one-pass statistics
# |lead mean| / lead spread up to which the statistics are taken about 0 (no subtraction in
# the pass): float64 only where that costs almost nothing to cancellation; float32 wherever
# the sums' cancellation stays under FAR_SHIFT below (|mean| / spread up to 2^10, checked
# by `combine_moments` afterwards), with a factor 4 for the lead rows' rough estimate.
NEAR_ZERO = {np.dtype(np.float64): 0.25, np.dtype(np.float32): float(1 << 8)}
# (mean(d) / spread)^2 above which the shifted one-pass variance has lost digits that matter
# (its relative error is about eps64 * (1 + ratio)): float64 results need every digit,
# float32 ones are rounded to 2^-24 and can afford 2^20 times more.
FAR_SHIFT = {np.dtype(np.float64): 1.0, np.dtype(np.float32): float(1 << 20)}

_threads = max(1, min(2, os.cpu_count() or 1))
_lock = threading.Lock()
_scratch = threading.local()


class _Pool:
    """A thread pool and how many calls are using it: retired pools close when unused."""

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="tinygrad_bn")
        self.pid = os.getpid()
        self.users = 0
        self.retired = False


_pool: _Pool | None = None
_fork_handler_registered = False


def set_num_threads(count: int) -> None:
    """How many threads the fused normalizations' passes use (default: 2, or 1 on one core).

    Safe while other threads run normalizations: a call that already started finishes on
    the threads it started with; the next one uses the new count.
    """
    global _threads, _pool
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    with _lock:
        _threads = count
        retiring, _pool = _pool, None
        if retiring is not None:
            retiring.retired = True
            idle = retiring.users == 0 and retiring.pid == os.getpid()
        else:
            idle = False
    if idle:
        retiring.executor.shutdown(wait=False)


def num_threads() -> int:
    """The thread count set by `set_num_threads`."""
    return _threads


def _forget_pool_in_child() -> None:
    # A forked child inherits the pool object but none of its threads: start afresh.
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()  # it may have been held by a parent's thread at the fork


def register_fork_handler() -> None:
    """Registered by the first parallel pass, not at import (importing changes nothing)."""
    global _fork_handler_registered
    if not _fork_handler_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_pool_in_child)
    _fork_handler_registered = True


def _run_parallel(work: Callable[[Any], Any], parts: list) -> list[Any]:
    global _pool
    if len(parts) == 1:
        return [work(parts[0])]
    with _lock:
        register_fork_handler()
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool(_threads)
        pool = _pool
        pool.users += 1
    try:
        return list(pool.executor.map(work, parts))
    finally:
        with _lock:
            pool.users -= 1
            close = pool.retired and pool.users == 0
        if close:
            pool.executor.shutdown(wait=False)


def _scratch_block(shape: tuple[int, ...], slot: int = 0) -> np.ndarray:
    """A per-thread float64 block-sized temporary (two slots), kept between calls (a fresh
    megabyte array would be fresh pages, faulted in on every pass)."""
    size = math.prod(shape)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = [None, None]
    cached = buffers[slot]
    if cached is None or cached.size < size:
        cached = buffers[slot] = np.empty(size, np.float64)
    return cached[:size].reshape(shape)


def _as_float64(block: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    # float32 data converted once into the scratch block (exact), so every later numpy call
    # runs its same-type loop instead of casting on the fly; float64 data is used as it is.
    if block.dtype == np.float64:
        return block
    np.copyto(buffer, block)
    return buffer


def _centred(block: np.ndarray, centre: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """block - centre in float64, into buffer."""
    return np.subtract(_as_float64(block, buffer), centre, out=buffer)


def _store(values: np.ndarray, target: np.ndarray) -> None:
    np.copyto(target, values, casting="same_kind")  # rounded once to x's dtype


@dataclass(frozen=True)
class Layout:
    """x viewed as (A, K) when B == 1, else (A, K, B); statistics over A (and B)."""

    A: int  # noqa: N815 - the three extents are the design's names
    K: int  # noqa: N815
    B: int  # noqa: N815

    @property
    def view(self) -> tuple[int, ...]:
        return (self.A, self.K) if self.B == 1 else (self.A, self.K, self.B)

    @property
    def axes(self) -> tuple[int, ...]:
        return (0,) if self.B == 1 else (0, 2)

    @property
    def param_view(self) -> tuple[int, ...]:
        # How a per-feature vector broadcasts against one block.
        return (self.K,) if self.B == 1 else (self.K, 1)

    @property
    def count(self) -> int:
        return self.A * self.B

    @property
    def subscripts(self) -> str:
        return "ak,ak->k" if self.B == 1 else "akb,akb->k"


def layout_for(x: Any, reduce_axes: tuple[int, ...], min_elements: int = MIN_ELEMENTS
               ) -> Layout | None:
    """The blocked layout for x, or None when the plain closed form should be used."""
    if type(x) is not np.ndarray or x.size < min_elements or not x.flags.c_contiguous \
            or 0 not in reduce_axes:
        return None
    ndim = x.ndim
    lead = 0
    while lead in reduce_axes:
        lead += 1
    trail = ndim
    while trail - 1 in reduce_axes and trail - 1 >= lead:
        trail -= 1
    if set(reduce_axes) != set(range(lead)) | set(range(trail, ndim)) or trail == lead:
        return None
    shape = x.shape
    layout = Layout(math.prod(shape[:lead]), math.prod(shape[lead:trail]), math.prod(shape[trail:]))
    return layout if layout.A > 1 else None


@dataclass(frozen=True)
class RowLayout:
    """x viewed as (N, G, C, S): statistics per row (n, g) over its C * S values, gamma and
    beta per (g, c). Layer norm of (N, D...) is (N, 1, D1*D2*..., 1); group norm of
    (N, C, H, W) with G groups is (N, G, C/G, H*W)."""

    N: int  # noqa: N815 - the design's names
    G: int  # noqa: N815
    C: int  # noqa: N815
    S: int  # noqa: N815

    @property
    def view(self) -> tuple[int, int, int, int]:
        return (self.N, self.G, self.C, self.S)

    @property
    def flat(self) -> tuple[int, int]:
        return (self.N * self.G, self.C * self.S)

    @property
    def param_view(self) -> tuple[int, int]:
        return (self.G, self.C)


def row_layout_for(x: Any, spec: Any, min_elements: int) -> RowLayout | None:
    """The row layout for a layer or group norm of a C-contiguous x, else None."""
    if type(x) is not np.ndarray or x.size < min_elements or not x.flags.c_contiguous:
        return None
    if spec.grouped_shape is not None:
        n, groups, channels, h, w = spec.grouped_shape
        if spec.reduce_axes != (2, 3, 4):
            return None
        return RowLayout(n, groups, channels, h * w)
    if spec.reduce_axes != tuple(range(1, x.ndim)) or spec.param_bshape[1:] != x.shape[1:]:
        return None
    return RowLayout(x.shape[0], 1, math.prod(x.shape[1:]), 1)


def _spans(layout: Layout) -> list[tuple[int, int]]:
    """Row blocks [start, stop) over A, fixed by the layout alone (not the thread count)."""
    rows = max(1, BLOCK_BYTES // (layout.K * layout.B * 8))
    return [(s, min(s + rows, layout.A)) for s in range(0, layout.A, rows)]


def _parts(spans: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """The blocks dealt into one contiguous, non-empty run per thread, in order."""
    threads = min(_threads, len(spans))
    return [spans[i * len(spans) // threads:(i + 1) * len(spans) // threads]
            for i in range(threads)]


def _in_order(results: list[list[np.ndarray]]) -> np.ndarray:
    # Per-block partial sums, added in block order: the same total for any thread count.
    return np.add.reduce(np.stack([block for run in results for block in run]), axis=0)


def lead_shift(xv: np.ndarray, layout: Layout) -> np.ndarray:
    """The float64 mean of the first few rows, per feature: close to the mean on real data."""
    return xv[:LEAD_ROWS].mean(axis=layout.axes, dtype=np.float64)


_SPLIT = 134217729.0  # 2^27 + 1: splits a float64 into two halves whose products are exact


def _halves(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    big = a * _SPLIT
    high = big - (big - a)
    return high, a - high


def shifted_mean(shift: np.ndarray, s1: np.ndarray, count: int, s1_error: np.ndarray
                 ) -> np.ndarray:
    """shift + (s1 + s1_error) / count (K,), rounded about once: the quotient's own rounding
    is at the scale of s1 / count, far above the mean's when the shift is near the mean
    (a mean of 1e-3 about a shift of 0.2), and a gradient sum of dy * xhat with sum(dy) ~ N
    moves by N times it. The quotient's remainder is taken exactly (Dekker's product)."""
    quotient = s1 / count
    with np.errstate(all="ignore"):
        product = quotient * count
        q_high, q_low = _halves(quotient)
        n_high, n_low = _halves(np.float64(count))
        low = ((q_high * n_high - product) + q_high * n_low + q_low * n_high) + q_low * n_low
        correction = (((s1 - product) - low) + s1_error) / count
        mean = shift + quotient
        back = mean - shift
        error = (shift - (mean - back)) + (quotient - back)
        refined = mean + (error + correction)
        plain = shift + quotient
    # Far magnitudes (a split that overflows, an inf or NaN sum): the plain quotient.
    return np.where(np.isfinite(refined), refined, plain)


def combine_moments(s1: np.ndarray, s2: np.ndarray, shift: np.ndarray, count: int,
                    dtype: np.dtype, s1_error: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, bool]:
    """mean and variance from the sums of d = x - shift and of d^2; and whether the shift was
    so far from the mean that a pass about the mean itself is needed for every digit. Given
    what the rounding of s1 left out (a sum carried over many partials), the mean is rounded
    about once (`shifted_mean`)."""
    m1 = s1 / count
    e2 = s2 / count
    if np.isfinite(e2).all():
        square = m1 * m1
        var = np.maximum(e2 - square, 0.0)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            square = m1 * m1
            # A mean of squares that overflowed is the textbook's inf variance (not inf - inf).
            var = np.where(np.isinf(e2), e2, np.maximum(e2 - square, 0.0))
    again = bool((square > FAR_SHIFT[np.dtype(dtype)] * var).any())
    mean = shift + m1 if s1_error is None else shifted_mean(shift, s1, count, s1_error)
    return mean, var, again


def _lead_rows(xv: np.ndarray, layout: Layout) -> np.ndarray:
    """The first rows holding at least LEAD_ROWS values per feature: LEAD_ROWS rows of a
    batch norm, one sample of a spatial one (not sixteen: those would be a large part of x,
    taken three more times)."""
    return xv[: max(1, -(-LEAD_ROWS // layout.B))]


def _near_zero_or(xv: np.ndarray, layout: Layout) -> np.ndarray:
    """0 when the leading rows put every mean within `NEAR_ZERO` standard deviations of
    zero (the sums about 0 then lose nothing x's dtype keeps to cancellation, and the pass
    saves its subtraction; `combine_moments` still checks the shift afterwards), else
    their mean."""
    lead = _lead_rows(xv, layout)
    shift = lead.mean(axis=layout.axes, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        spread = np.sqrt(np.mean(np.square(lead - shift.reshape(layout.param_view),
                                           dtype=np.float64), axis=layout.axes))
        near = bool(np.all(np.abs(shift) <= NEAR_ZERO[np.dtype(xv.dtype)] * spread))
    return np.zeros_like(shift) if near else shift


LONG_SEGMENT = 256  # a run of contiguous values longer than this: pairwise sums
FLOAT32_LONG_SEGMENT = 1 << 20  # the same for float32 data (summed in float64, see below)


def _pairwise(run: int, dtype: np.dtype) -> bool:
    """Whether float64 sums over contiguous runs of `run` values (of data of `dtype`) are
    taken pairwise, as the textbook's sums along such runs are, instead of one term at a time
    (einsum, vecdot: no product array, but over a run of 16,384 values they lost ten times
    the textbook's digits, and hundreds of eps where one pair of values dominates). float32
    data affords running sums up to `FLOAT32_LONG_SEGMENT` terms: n <= 2^20 terms added one
    at a time in float64 are within n eps64 <= 2^-32 of the sum of their magnitudes, 2^-9
    eps32, far below what float32 results keep."""
    return run > (FLOAT32_LONG_SEGMENT if dtype == np.float32 else LONG_SEGMENT)


def _feature_products(a: np.ndarray, b: np.ndarray, layout: Layout, dtype: np.dtype
                      ) -> np.ndarray:
    """sum(a * b) per feature over a float64 block (K,) of data of `dtype`: einsum where
    each feature's values come in short runs (the textbook adds those runs one after
    another too), pairwise where they come in long runs (`_pairwise`): spatial batch norm's
    H * W, or a single feature, whose whole block is one run."""
    run = layout.B if layout.K > 1 else a.shape[0] * layout.B
    if not _pairwise(run, dtype):
        return np.einsum(layout.subscripts, a, b)
    return np.add.reduce(np.multiply(a, b), axis=layout.axes)


def _row_products(a: np.ndarray, b: np.ndarray, dtype: np.dtype,
                  out: np.ndarray | None = None) -> np.ndarray:
    """sum(a * b) along the last axis of float64 arrays (rows of data of `dtype`): vecdot
    for short rows, pairwise for long ones (`_pairwise`), as the textbook sums a row."""
    if not _pairwise(a.shape[-1], dtype):
        return np.vecdot(a, b, out=out)
    return np.add.reduce(np.multiply(a, b), axis=-1, out=out)


def statistics(x: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and biased variance (K,): one pass over x, two when far off."""
    xv = x.reshape(layout.view)
    axes, pview = layout.axes, layout.param_view
    spans = _spans(layout)
    shift = _near_zero_or(xv, layout)
    while True:
        shift_b = None if not shift.any() else shift.reshape(pview)

        def sums(run: list[tuple[int, int]], shift_b: np.ndarray = shift_b) -> list[np.ndarray]:
            buffer = _scratch_block((run[0][1] - run[0][0], *layout.view[1:]))
            partial = []
            for start, stop in run:
                if shift_b is None:  # about zero: float32 squares are exact in float64
                    d = _as_float64(xv[start:stop], buffer[: stop - start])
                else:
                    d = _centred(xv[start:stop], shift_b, buffer[: stop - start])
                partial.append(np.stack([d.sum(axis=axes),
                                      _feature_products(d, d, layout, xv.dtype)]))
            return partial

        with np.errstate(over="ignore", invalid="ignore"):
            total = _in_order(_run_parallel(sums, _parts(spans)))
        mean, var, again = combine_moments(total[0], total[1], shift, layout.count, x.dtype)
        if not again:
            return mean, var
        shift = mean


# |mean| / std up to which a float32 out may be taken as scale * (x - (mean - beta / scale)):
# FAR_SHIFT's float32 limit, where the folded centre's rounding costs 2^-19 eps32 at most.
BETA_FOLD_RATIO = float(1 << 10)


def beta_folded_centre(scale: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray
                       ) -> np.ndarray | None:
    """mean - beta / scale per feature ((K,) float64), for float32 outs taken as
    scale * (x - centre) in float64: two operations per value (x - centre, the product
    rounded once to float32 as it is stored) instead of three; None where that would not
    be as exact.

    out = scale * (x - mean) + beta = scale * (x - centre) exactly. x - centre and the
    product round relatively (2^-53 of |out| / |scale| and of |out|: as exact as the
    textbook, near zero too); only forming the centre rounds on other terms, by
    2^-53 (2 |beta / scale| + |mean|) at most, 2^-53 (2 |beta| + |gamma| C) in out with
    C = |mean| ivar. A feature's largest |out| is at least |beta| (the mean of its out) and
    at least |gamma| R / 2 (R = sqrt(var) ivar, the root mean square of xhat), so normwise
    that is at most 2^-30 (2 + 2 |mean| / sqrt(var)) eps32: 2^-19 eps32 for |mean| / std
    up to `BETA_FOLD_RATIO`. Refused for any feature with scale 0 (gamma 0: out = beta),
    a centre that is not finite (non-finite statistics, beta / scale past float64), or
    |mean| / std above the ratio (a constant feature included)."""
    with np.errstate(all="ignore"):
        centre = mean - beta / scale
        fits = np.all((scale != 0) & np.isfinite(centre) & np.isfinite(var)
                      & (mean * mean <= BETA_FOLD_RATIO * BETA_FOLD_RATIO * var))
    return centre if bool(fits) else None


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              var: np.ndarray, eps: float, layout: Layout) -> np.ndarray:
    """out = gamma * (x - mean) / sqrt(var + eps) + beta; gamma, beta, mean, var: (K,) float64."""
    xv = x.reshape(layout.view)
    pview = layout.param_view
    scale = gamma / np.sqrt(var + eps)
    centre = beta_folded_centre(scale, beta, mean, var) if x.dtype == np.float32 else None
    scale = scale.reshape(pview)
    mean_b, beta_b = mean.reshape(pview), beta.reshape(pview)
    out = np.empty(x.shape, x.dtype)
    ov = out.reshape(layout.view)

    def run(spans: list[tuple[int, int]]) -> None:
        buffer = _scratch_block((spans[0][1] - spans[0][0], *layout.view[1:]))
        for start, stop in spans:
            if centre is not None:  # scale * (x - centre), rounded once as it is stored
                t = _centred(xv[start:stop], centre.reshape(pview), buffer[: stop - start])
                np.multiply(t, scale, out=ov[start:stop])
                continue
            t = _centred(xv[start:stop], mean_b, buffer[: stop - start])
            np.multiply(t, scale, out=t)
            if ov.dtype == np.float64:
                np.add(t, beta_b, out=ov[start:stop])
            else:
                _store(np.add(t, beta_b, out=t), ov[start:stop])

    with np.errstate(invalid="ignore", over="ignore"):
        _run_parallel(run, _parts(_spans(layout)))
    return out


# float32 data about a mean within this many standard deviations of zero: the backward's
# sums and dx are taken about 0 instead of the mean (one subtraction per element fewer).
# Its cancellation costs float64 digits in proportion (2^10 eps64 = 2^-42), far below what
# float32 results keep, even where dx itself cancels to 1e-5 of dy (batches of two).
EXPANDED_FLOAT32_RATIO = float(1 << 10)
# float64 data, whose results need every digit, takes only dx about 0, and only for means
# within a standard deviation of 0: x * slope is then no larger than c * (|xhat| + 1), terms
# dx has anyway, and the equivalence suite finds dx as exact. Its sums stay centred: taken
# about 0, sum(dy * x) - mean * sum(dy), they made dgamma 1.5 times less exact (measured).
EXPANDED_FLOAT64_RATIO = 1.0


def about_zero(dtype: np.dtype, mean: np.ndarray, ivar: np.ndarray, sums: bool) -> bool:
    """Whether the backward's sums (`sums`) or its dx may be taken about 0, not the mean."""
    if dtype == np.float32:
        ratio = EXPANDED_FLOAT32_RATIO
    elif sums:
        return False
    else:
        ratio = EXPANDED_FLOAT64_RATIO
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.all(np.abs(mean) * ivar <= ratio))


# |mean| / std up to which the float32 dx takes x - mean as x - hi - lo (hi + lo the float64
# mean in two float32s): the rounding of lo then costs at most 2^-48 |mean| / std of xhat,
# 2^-28 of eps32 at this ratio.
SPLIT_MEAN_RATIO = float(1 << 20)
# The float32 dx's error bound (in eps32, normwise, see `float32_dx_is_exact`) up to which it
# is used: the equivalence suite allows 8.
FLOAT32_DX_BOUND = 4.0
_EPS32 = float(np.finfo(np.float32).eps)
_EPS64 = float(np.finfo(np.float64).eps)
_TINY64 = float(np.finfo(np.float64).tiny)


def float32_dx_is_exact(sum_dy: np.ndarray, sum_dy_d: np.ndarray, sum_dy2: np.ndarray,
                        gamma: np.ndarray, mean: np.ndarray, var: np.ndarray, ivar: np.ndarray,
                        low: np.ndarray | None, high: np.ndarray | None, count: int,
                        folded: bool, square_terms: int) -> bool:
    """Whether dx = a * (dy - m - k * (x - mean)) worked elementwise in float32 (a, k, m the
    per-feature float64 factors rounded to float32) stays within `FLOAT32_DX_BOUND` eps32 of
    the exact dx, normwise over each feature's own values, judged from the float64 sums of dy
    and dy * (x - mean), the sums of dy^2 (float32 partial sums of at most `square_terms`
    terms, added in float64) and each feature's least and largest x (`low`, `high`; None:
    not known, max |xhat| <= sqrt(count) is used instead, the mean of xhat^2 being below 1).

    Each float32 operation rounds by at most eps32 / 2 of its own result. Of the
    intermediates, only two can be larger than dx itself: k * (x - mean) = c * xhat with
    c = mean(dy * xhat), and m = mean(dy). When `folded`, dx is taken as dy - k * x - (m -
    k * mean): x * k32 rounds twice (k, the product), |c| X with X = max |x| ivar, and m' =
    m - k * mean adds |c| |mean| ivar to m. Otherwise x - hi - lo rounds twice (x - hi is
    exact only for x within a factor 2 of hi, which x crossing 0 is not) and k32 and the
    product twice more: 2 |c| X with X = max |x - mean| ivar. Summing the roundings,
        |error| <= eps32 * (|a| (q |c| X + |m'|) + 2 |dx|),   q = 1 folded, else 2,
    so a feature's normwise error, |error| / (2 max |dx|) over its values, in eps32, is at
    most
        1 + |a| (q |c| X + |m'|) / (2 max |dx|),
    taken for every feature (a feature's small dx that cancels is not hidden behind the
    others' larger one). X follows from x's range; max |dx| >= |a| rms(r),
    r = dy - m - c xhat, whose mean square follows from the sums:
        mean(r^2) = mean(dy^2) - m^2 - c^2 (2 - var * ivar^2).
    That difference is taken with a margin for the sums' own rounding (a float32 sum of n
    squares is within (n + 1) eps32 of its value, relatively: its terms are positive), so
    a dx that cancels (dy nearly a line in xhat, where float32 would lose it) is never
    passed. Ranges are checked as well: |dx| <= |a| (sqrt(count mean(dy^2)) + |m'| + |c| X)
    stays below 2^126, a margin of 4 under float32's largest value for the roundings on the
    way, and nothing underflows to where its absolute rounding (2^-149) would matter
    (`float32_factors_fit`).
    """
    with np.errstate(all="ignore"):
        m, c = sum_dy / count, sum_dy_d * ivar / count
        bound = float32_dx_bound(m, c, sum_dy2 / count, mean, var, ivar, gamma * ivar, low,
                                 high, count, folded, scaled_first=False,
                                 square_terms=square_terms)
    return bound <= FLOAT32_DX_BOUND


def float32_dx_bound(m: np.ndarray, c: np.ndarray, mean_square: np.ndarray, mean: np.ndarray,
                     var: np.ndarray, ivar: np.ndarray, weight: np.ndarray,
                     low: np.ndarray | None, high: np.ndarray | None, count: int, folded: bool,
                     scaled_first: bool,
                     square_terms: int) -> float:
    """The float32 dx's normwise error bound in eps32 (inf outside float32's safe range), per
    statistic from m = mean(g), c = mean(g * xhat), mean(g^2), the statistics and the
    factor `weight` that multiplies g - m - c * xhat into dx (all float64 arrays of one
    shape); see `float32_dx_is_exact` and, for each statistic's terms, `dx_bound_terms`.
    `square_terms`: the terms of each float32 partial sum behind mean(g^2); `low`, `high`:
    the least and largest x of each statistic, or None (then max |xhat| <= sqrt(count))."""
    ranged = low is not None and high is not None
    ratio, in_range = dx_bound_terms(m, c, mean_square, mean, var, ivar, weight,
                                     low if ranged else mean, high if ranged else mean, ranged,
                                     count, folded, scaled_first, square_terms)
    if not bool(np.all(in_range)):
        return math.inf
    # Each statistic's worst term against its own dx: a statistic whose dx is small and
    # cancels is not hidden behind the others' larger dx.
    return 1.0 + float(np.max(ratio))


def dx_bound_terms(m: Any, c: Any, mean_square: Any, mean: Any, var: Any, ivar: Any,
                   weight: Any, low: Any, high: Any, ranged: bool, count: int, folded: bool,
                   scaled_first: bool, square_terms: int) -> tuple[Any, Any]:
    """Per statistic, arrays and float64 scalars alike (the compiled passes take it one
    statistic at a time): the ratio of its worst rounding to twice its largest |dx|, in eps32
    over 1, and whether it lies in float32's safe range. `ranged`: low and high are the
    statistic's least and largest x (else max |xhat| <= sqrt(count) is used).

    `scaled_first`: g is formed in float32 first (row passes: dy * gamma * ivar, rounded
    before the subtractions): that product rounds twice more, by eps32 |g| <= eps32 (|dx| /
    weight + |m'| + |c| X), which makes the terms (q + 1) |c| X + 2 |m'|."""
    ms_r = mean_square - m * m - c * c * (2.0 - var * ivar * ivar)
    margin = (8.0 * (count + 1) * _EPS64 + (square_terms + 1) * _EPS32) * mean_square
    rms_r = np.sqrt(np.maximum(ms_r - margin, 0.0))
    weight = np.abs(weight)
    centre_term = np.abs(mean) * ivar
    if not ranged:  # |x - hi - lo| ivar <= max |xhat| + 1 / 16
        x_bound = math.sqrt(count) + 1.0 + (centre_term if folded else 0.0 * centre_term)
    elif folded:  # the x * slope32 term, |x| ivar |c|
        x_bound = np.maximum(np.abs(low), np.abs(high)) * ivar
    else:  # (x - hi - lo) * slope32, |x - mean| ivar |c| (hi + lo within 2^-48 of the mean)
        x_bound = np.maximum(high - mean, mean - low) * ivar + 2.0**-40 * centre_term
    x_bound = x_bound * (1.0 + 2.0**-20) + 2.0**-40  # for the rounding of these factors
    offset = np.abs(m) + (np.abs(c) * centre_term if folded else 0.0 * centre_term)
    # x - hi, - lo and the product with slope32 round three times (x - hi is exact only for x
    # within a factor 2 of hi), slope32 once: 2 eps32 |c| X; folded, x * slope32, 1 eps32.
    line = np.abs(c) * x_bound
    if scaled_first:
        worst = weight * ((2.0 if folded else 3.0) * line + 2.0 * offset)
    else:
        worst = weight * ((1.0 if folded else 2.0) * line + offset)
    lower = weight * rms_r  # <= max |dx| of the statistic's values
    # A statistic whose g is 0 (a unit that got no gradient) has dx = 0 exactly.
    idle = (worst == 0) & (mean_square == 0)
    # max |dx| <= weight * max |g - m - c xhat| <= weight * (sqrt(count mean(g^2)) + |m| +
    # |c| X): a margin of 4 below float32's largest value for the roundings on the way.
    in_range = (np.isfinite(mean_square) & np.isfinite(c) & np.isfinite(m) & (ivar > 0)
                & (np.sqrt(count * var) + np.abs(mean) <= 2.0**120)
                & (np.sqrt(mean_square) + np.abs(m) <= 2.0**100) & (weight <= 2.0**100)
                & (weight * (np.sqrt(count * mean_square) + offset + line) <= 2.0**126)
                & (idle | (lower >= 2.0**-100 * np.maximum(1.0, weight)))
                & (centre_term <= SPLIT_MEAN_RATIO))
    # idle: worst is 0, and so is the ratio (lower may be 0 there).
    return worst / (2.0 * np.maximum(lower, 1.0 * idle)), in_range


# How close hi + lo, the float64 mean in two float32s, must come to it for the float32 dx's
# bound (`float32_dx_bound` counts the rounding of lo as 2^-48 |mean| / std of xhat).
SPLIT_MEAN_ERROR = 2.0**-48


def mean_split_fits(mean: np.ndarray) -> bool:
    """Whether every mean is within `SPLIT_MEAN_ERROR` of hi + lo, its two float32 halves:
    not where lo is subnormal (a mean near 1e-36: lo's rounding of 2^-150 is then no longer
    relative, and a spread of 1e-41 put dx 100 eps32 off)."""
    hi = mean.astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.all(split_fits(mean, hi, (mean - hi).astype(np.float32))))


def split_fits(mean: Any, hi: Any, lo: Any) -> Any:
    """Per mean, arrays and scalars alike (the compiled passes take it a mean at a time):
    whether hi + lo (float32s) is within `SPLIT_MEAN_ERROR` of the float64 mean."""
    return np.abs((mean - np.float64(hi)) - np.float64(lo)) <= SPLIT_MEAN_ERROR * np.abs(mean)


def float32_factors_fit(*factors: np.ndarray) -> bool:
    """Whether the float64 factors of a float32 dx keep their digits when rounded to
    float32: each is 0 or within [2^-100, 2^100] (a factor that became subnormal or 0,
    such as ivar^2 of data near 1e30, would drop a term of dx)."""
    for factor in factors:  # (abs and comparisons warn of nothing)
        size = np.abs(factor)
        if not np.all((size == 0) | ((size >= 2.0**-100) & (size <= 2.0**100))):
            return False
    return True


def backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
             var: np.ndarray, eps: float, layout: Layout
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (x's shape and dtype), dgamma and dbeta (K,) float64, by the closed form."""
    xv, dyv = x.reshape(layout.view), upstream.reshape(layout.view)
    axes, pview, count = layout.axes, layout.param_view, layout.count
    ivar = 1.0 / np.sqrt(var + eps)
    mean_b, ivar_b = mean.reshape(pview), ivar.reshape(pview)
    spans = _spans(layout)
    single = x.dtype == np.float32
    expanded = about_zero(x.dtype, mean, ivar, sums=True)
    dx_expanded = about_zero(x.dtype, mean, ivar, sums=False)

    def centred(block: np.ndarray, buffer: np.ndarray, about_0: bool) -> np.ndarray:
        return _as_float64(block, buffer) if about_0 else _centred(block, mean_b, buffer)

    def sums(run: list[tuple[int, int]]) -> list[np.ndarray]:
        rows = run[0][1] - run[0][0]
        work, dy64 = _scratch_block((rows, *layout.view[1:])), _scratch_block(
            (rows, *layout.view[1:]), 1)
        partial = []
        for start, stop in run:
            dy = _as_float64(dyv[start:stop], dy64[: stop - start])
            d = centred(xv[start:stop], work[: stop - start], expanded)
            if not single:  # xhat first, as the textbook: dy * (x - mean) leaves float64's
                np.multiply(d, ivar_b, out=d)  # range (over- or underflows) where dy * xhat does not
            found = [dy.sum(axis=axes), _feature_products(dy, d, layout, x.dtype)]
            if single:  # for the float32 dx's error bound: float32 sums, bounded error
                block = dyv[start:stop]
                with np.errstate(over="ignore"):  # per thread; inf takes the float64 dx
                    found.append(np.einsum(layout.subscripts, block, block))
            partial.append(np.stack(found))
        return partial

    with np.errstate(invalid="ignore", over="ignore"):
        total = _in_order(_run_parallel(sums, _parts(spans)))
        dbeta = total[0]
        if single:
            # sum(dy * (x - mean)) = sum(dy * x) - mean * sum(dy) when taken about 0.
            sum_dy_d = total[1] - mean * dbeta if expanded else total[1]
            # sum(dy * xhat) = ivar * sum(dy * (x - mean)): float32 data's products stay far
            # inside float64's range.
            dgamma = np.where(ivar == 0, 0.0, sum_dy_d * ivar)
        else:
            dgamma, sum_dy_d = total[1], None  # float64's sums were of dy * xhat
    mean_dy = dbeta / count
    slope = ivar * dgamma / count  # xhat * mean(dy * xhat) = (x - mean) * slope
    folded = single and bool(np.all(np.abs(mean) * ivar <= 1.0))
    def float32_exact(low: np.ndarray | None, high: np.ndarray | None) -> bool:
        return float32_dx_is_exact(dbeta, sum_dy_d, total[2], gamma, mean, var, ivar, low,
                                   high, count, folded,
                                   square_terms=max(a - b for b, a in spans) * layout.B)

    # Taken with max |xhat| <= sqrt(count) first (large counts pass so), else with x's range
    # per feature, a read of x that makes the bound as tight as max |xhat| allows.
    if single and (float32_exact(None, None) or float32_exact(*_feature_range(xv, layout, spans))) \
            and float32_factors_fit(gamma * ivar, slope, mean_dy, mean_dy - mean * slope) \
            and (folded or mean_split_fits(mean)):
        dx = dx_float32(xv, dyv, gamma * ivar, slope, mean_dy, mean, folded, spans)
        return dx.reshape(x.shape), dgamma, dbeta
    scale = (gamma * ivar).reshape(pview)
    slope_b = slope.reshape(pview)
    # dy - mean(dy) - (x - mean) * slope = dy - x * slope - (mean(dy) - mean * slope) about 0
    offset = (mean_dy - mean * slope if dx_expanded else mean_dy).reshape(pview)
    dx = np.empty(x.shape, x.dtype)
    dxv = dx.reshape(layout.view)

    def combine(run: list[tuple[int, int]]) -> None:
        rows = run[0][1] - run[0][0]
        work, dy64 = _scratch_block((rows, *layout.view[1:])), _scratch_block(
            (rows, *layout.view[1:]), 1)
        for start, stop in run:
            t = work[: stop - start]  # float64 x about 0 is the caller's x itself: not in place
            np.multiply(centred(xv[start:stop], t, dx_expanded), slope_b, out=t)
            np.subtract(_as_float64(dyv[start:stop], dy64[: stop - start]), t, out=t)
            np.subtract(t, offset, out=t)
            if dxv.dtype == np.float64:
                np.multiply(t, scale, out=dxv[start:stop])
            else:
                _store(np.multiply(t, scale, out=t), dxv[start:stop])

    with np.errstate(invalid="ignore", over="ignore"):
        _run_parallel(combine, _parts(spans))
    return dx, dgamma, dbeta


def _feature_range(xv: np.ndarray, layout: Layout, spans: list[tuple[int, int]]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The least and the largest x of each feature, (K,) float64, by blocks."""
    def run(run_: list[tuple[int, int]]) -> list[np.ndarray]:
        return [np.stack([np.min(xv[start:stop], axis=layout.axes),
                          np.max(xv[start:stop], axis=layout.axes)]) for start, stop in run_]

    blocks = np.stack([block for run in _run_parallel(run, _parts(spans)) for block in run])
    return (np.min(blocks[:, 0], axis=0).astype(np.float64),
            np.max(blocks[:, 1], axis=0).astype(np.float64))


def _float32_factors(slope: np.ndarray, offset: np.ndarray, mean: np.ndarray, folded: bool,
                     shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """slope and offset in float32 (shaped `shape`), and the float64 mean split as hi + lo,
    two float32s (None when `folded`: the mean is then taken into the offset, offset - slope
    * mean, and x is used about 0)."""
    single = np.float32
    slope32 = slope.astype(single).reshape(shape)
    if folded:
        return slope32, (offset - slope * mean).astype(single).reshape(shape), None, None
    hi = mean.astype(single)
    lo = (mean - hi).astype(single).reshape(shape)
    return slope32, offset.astype(single).reshape(shape), hi.reshape(shape), lo


def _slope_times_centred(x: np.ndarray, slope32: np.ndarray, hi: Any, lo: Any,
                         out: np.ndarray) -> None:
    """out = slope * (x - hi - lo) in float32 (x - hi exact: Sterbenz, see `dx_float32`),
    or slope * x when the mean is folded into the offset (hi None)."""
    if hi is None:
        np.multiply(x, slope32, out=out)
        return
    np.subtract(x, hi, out=out)
    np.subtract(out, lo, out=out)
    np.multiply(out, slope32, out=out)


def dx_float32(xv: np.ndarray, dyv: np.ndarray, scale: np.ndarray, slope: np.ndarray,
               mean_dy: np.ndarray, mean: np.ndarray, folded: bool,
               spans: list[tuple[int, int]]) -> np.ndarray:
    """dx = scale * (dy - mean_dy - (x - mean) * slope) worked in float32, x and dy float32
    in the (A, K[, B]) view, the factors (K,) float64; each block is formed in dx itself.

    Exact only where `float32_dx_is_exact` says so. x - mean is x - hi - lo with hi + lo the
    float64 mean in two float32s: x - hi is exact for x near the mean (Sterbenz), and lo
    restores the digits that rounding the mean to hi drops. When `folded` (|mean| within a
    standard deviation of 0) it is taken about 0 instead: dy - x * slope - (mean_dy - mean *
    slope), two operations fewer.
    """
    single = np.float32
    pview = xv.shape[1:2] if xv.ndim == 2 else (xv.shape[1], 1)
    scale32 = scale.astype(single).reshape(pview)
    slope32, offset32, hi, lo = _float32_factors(slope, mean_dy, mean, folded, pview)
    dxv = np.empty(xv.shape, single)

    def run(run_: list[tuple[int, int]]) -> None:
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):  # per thread
            for start, stop in run_:
                one_block(dxv[start:stop], start, stop)

    def one_block(t: np.ndarray, start: int, stop: int) -> None:
        _slope_times_centred(xv[start:stop], slope32, hi, lo, t)
        np.subtract(dyv[start:stop], t, out=t)
        np.subtract(t, offset32, out=t)
        np.multiply(t, scale32, out=t)

    _run_parallel(run, _parts(spans))
    return dxv


# --- rows: layer and group norm -------------------------------------------------------
# x viewed as (N, G, C, S) (`RowLayout`): one statistic per row (n, g) over its C * S values,
# gamma and beta per (g, c). A block is a run of whole samples, so every row's statistics
# and its backward's row sums are computed inside one block (in cache): two passes over
# the row in cache (mean, then the squares of x - mean) cost one read of x from memory.
# Rows are worked in float64 exactly as the textbook does; nothing depends on the blocking
# but the order in which the per-block sums of dgamma and dbeta are added (fixed by the
# layout, not by the thread count).


def _sample_spans(rows: RowLayout) -> list[tuple[int, int]]:
    """Blocks of whole samples [start, stop) over N, fixed by the layout alone."""
    per_sample = rows.G * rows.C * rows.S
    samples = max(1, BLOCK_BYTES // (per_sample * 8))
    return [(s, min(s + samples, rows.N)) for s in range(0, rows.N, samples)]


def _row_block(rows: RowLayout, count: int) -> tuple[int, ...]:
    # One block as (samples * G, C * S): a row per statistic.
    return (count * rows.G, rows.C * rows.S)


def _affine_view(rows: RowLayout, count: int) -> tuple[int, ...]:
    # One block shaped so that a (G, C) parameter (viewed as `_param_b`) broadcasts.
    if rows.S == 1:
        return (count, rows.G * rows.C)
    return (count, rows.G, rows.C, rows.S)


def _param_b(param: np.ndarray, rows: RowLayout) -> np.ndarray:
    # gamma or beta, (G, C) float64, shaped for `_affine_view`.
    return param.reshape(rows.G * rows.C) if rows.S == 1 else param.reshape(rows.G, rows.C, 1)


def _param_axes(rows: RowLayout) -> tuple[int, ...]:
    # The axes of `_affine_view` that dgamma and dbeta sum over.
    return (0,) if rows.S == 1 else (0, 3)


def _centred_rows(block: np.ndarray, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x - mean, mean) per row of a (R, M) block, float64, two passes in cache."""
    x64 = _as_float64(block, buffer)
    mean = np.add.reduce(x64, axis=1) / block.shape[1]
    return np.subtract(x64, mean[:, None], out=buffer), mean


def row_statistics(x: np.ndarray, rows: RowLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per-row float64 mean and biased variance, (N * G,): two passes per row, in cache."""
    xv = x.reshape(rows.N, *_row_block(rows, 1))
    width = rows.C * rows.S

    def run(spans: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        buffer = _scratch_block(_row_block(rows, spans[0][1] - spans[0][0]))
        found = []
        for start, stop in spans:
            block = xv[start:stop].reshape(_row_block(rows, stop - start))
            d, mean = _centred_rows(block, buffer[: (stop - start) * rows.G])
            # errstate is per thread: squares past float64 give inf, as the textbook's.
            with np.errstate(over="ignore", invalid="ignore"):
                found.append((mean, _row_products(d, d, x.dtype) / width))
        return found

    with np.errstate(over="ignore", invalid="ignore"):  # squares past float64: inf, as the textbook
        found = [pair for run_ in _run_parallel(run, _parts(_sample_spans(rows))) for pair in run_]
    return np.concatenate([m for m, _ in found]), np.concatenate([v for _, v in found])


def _affine_rows(t: np.ndarray, ivar: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 target: np.ndarray, rows: RowLayout, count: int) -> None:
    """target = gamma * t * ivar + beta for a block of rows t = x - mean ((count * G, C * S)
    float64, overwritten), ivar per row, gamma and beta (G, C) float64."""
    if rows.S == 1 and rows.G == 1:  # layer norm: gamma varies along the row
        t *= ivar[:, None]
        np.multiply(t, gamma.reshape(-1), out=t)
        a, beta_b = t, beta.reshape(-1)
    else:  # group norm: ivar * gamma is one factor per channel
        scale = ivar.reshape(count, rows.G, 1) * gamma
        a = t.reshape(count, rows.G, rows.C, rows.S)
        np.multiply(a, scale[..., None], out=a)
        beta_b = beta[..., None]
    target = target.reshape(a.shape)
    if target.dtype == np.float64:
        np.add(a, beta_b, out=target)
    else:
        _store(np.add(a, beta_b, out=a), target)


def row_normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                  var: np.ndarray, eps: float, rows: RowLayout) -> np.ndarray:
    """out = gamma * (x - mean) * ivar + beta; gamma, beta (G, C), mean, var (N * G,) float64."""
    xv = x.reshape(rows.N, *_row_block(rows, 1))
    out = np.empty(x.shape, x.dtype)
    ov = out.reshape(rows.N, *_row_block(rows, 1))
    ivar = 1.0 / np.sqrt(var + eps)

    def run(spans: list[tuple[int, int]]) -> None:
        buffer = _scratch_block(_row_block(rows, spans[0][1] - spans[0][0]))
        with np.errstate(invalid="ignore", over="ignore"):  # errstate is per thread
            for start, stop in spans:
                count = stop - start
                flat = slice(start * rows.G, stop * rows.G)
                t = _centred(xv[start:stop].reshape(_row_block(rows, count)), mean[flat, None],
                             buffer[: count * rows.G])
                _affine_rows(t, ivar[flat], gamma, beta, ov[start:stop], rows, count)

    _run_parallel(run, _parts(_sample_spans(rows)))
    return out


def row_forward_with_statistics(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                                rows: RowLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """out, and the per-row float64 mean and variance (N * G,), in one pass over x: each
    block's rows are centred once and normalized while in cache, with the very operations
    of `row_statistics` and `row_normalize` (the same bits as calling both)."""
    xv = x.reshape(rows.N, *_row_block(rows, 1))
    out = np.empty(x.shape, x.dtype)
    ov = out.reshape(rows.N, *_row_block(rows, 1))
    width = rows.C * rows.S
    mean, var = np.empty(rows.N * rows.G), np.empty(rows.N * rows.G)

    def run(spans: list[tuple[int, int]]) -> None:
        buffer = _scratch_block(_row_block(rows, spans[0][1] - spans[0][0]))
        with np.errstate(invalid="ignore", over="ignore"):  # errstate is per thread
            for start, stop in spans:
                count = stop - start
                flat = slice(start * rows.G, stop * rows.G)
                block = xv[start:stop].reshape(_row_block(rows, count))
                d, mean[flat] = _centred_rows(block, buffer[: count * rows.G])
                var[flat] = _row_products(d, d, x.dtype) / width
                _affine_rows(d, 1.0 / np.sqrt(var[flat] + eps), gamma, beta, ov[start:stop],
                             rows, count)

    _run_parallel(run, _parts(_sample_spans(rows)))
    return out, mean, var


def row_backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
                 var: np.ndarray, eps: float, rows: RowLayout
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (x's shape and dtype), dgamma and dbeta (G * C,) float64, by the closed form
    dx = ivar * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, per row."""
    if rows.S > 1:
        return _channel_row_backward(upstream, x, gamma, mean, var, eps, rows)
    xv = x.reshape(rows.N, *_row_block(rows, 1))
    dyv = upstream.reshape(rows.N, *_row_block(rows, 1))
    dx = np.empty(x.shape, x.dtype)
    dxv = dx.reshape(rows.N, *_row_block(rows, 1))
    ivar = 1.0 / np.sqrt(var + eps)
    gamma_b = _param_b(gamma, rows)
    width = rows.C * rows.S
    axes = _param_axes(rows)
    subscripts = "nk,nk->k" if rows.S == 1 else "ngcs,ngcs->gc"

    def run(spans: list[tuple[int, int]]) -> list[np.ndarray]:
        shape = _row_block(rows, spans[0][1] - spans[0][0])
        centred, grad = _scratch_block(shape), _scratch_block(shape, 1)
        partial = []
        for start, stop in spans:
            count = stop - start
            flat = slice(start * rows.G, stop * rows.G)
            block = _row_block(rows, count)
            xhat = _centred(xv[start:stop].reshape(block), mean[flat, None],
                            centred[: count * rows.G])
            xhat *= ivar[flat, None]
            dy = _as_float64(dyv[start:stop].reshape(block), grad[: count * rows.G])
            dy_a, xhat_a = dy.reshape(_affine_view(rows, count)), xhat.reshape(
                _affine_view(rows, count))
            partial.append(np.stack([np.einsum(subscripts, dy_a, xhat_a).reshape(-1),
                                     np.add.reduce(dy_a, axis=axes).reshape(-1)]))
            g = np.multiply(dy_a, gamma_b, out=grad[: count * rows.G].reshape(dy_a.shape))
            g = g.reshape(block)
            mean_g = np.add.reduce(g, axis=1) / width
            mean_gx = _row_products(g, xhat, x.dtype) / width
            xhat *= mean_gx[:, None]
            np.subtract(g, xhat, out=xhat)
            xhat -= mean_g[:, None]
            target = dxv[start:stop].reshape(block)
            if target.dtype == np.float64:
                np.multiply(xhat, ivar[flat, None], out=target)
            else:
                _store(np.multiply(xhat, ivar[flat, None], out=xhat), target)
        return partial

    with np.errstate(invalid="ignore", over="ignore"):
        total = _in_order(_run_parallel(run, _parts(_sample_spans(rows))))
    return dx, total[0], total[1]


def _channel_row_backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray,
                          mean: np.ndarray, var: np.ndarray, eps: float, rows: RowLayout
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`row_backward` where gamma is constant along each channel's S values (group norm).

    Everything a row needs follows from two float64 sums per channel over its S values,
    sum(dy) and sum(dy * (x - mean)) (and, for float32, sum(dy^2) and each row's least and
    largest x, for `float32_dx_bound`), taken in a first pass. With a = ivar * gamma per
    channel, mean(g) = sum_c gamma sum(dy) / (C S) and mean(g * xhat) = ivar sum_c gamma
    sum(dy * (x - mean)) / (C S) per row,
        dx = a * dy - k * (x - mean) - ivar * mean(g),   k = ivar^2 mean(g * xhat),
    formed in a second pass, in float32 where the bound holds for every row, else in
    float64. Two passes, each a few numpy calls per block, cost less than one pass with the
    per-row factors and the bound taken block by block (dozens of calls on tiny arrays).
    """
    xv = x.reshape(rows.N, *_row_block(rows, 1))
    dyv = upstream.reshape(rows.N, *_row_block(rows, 1))
    channels = (rows.N, rows.G, rows.C, rows.S)
    ivar = 1.0 / np.sqrt(var + eps)
    width = rows.C * rows.S
    single = x.dtype == np.float32
    # float32 means near 0 (`about_zero`): the sums are taken about 0,
    # sum(dy * (x - mean)) = sum(dy * x) - mean * sum(dy).
    expanded = about_zero(x.dtype, mean, ivar, sums=True)
    sum_dy, sum_dy_d = np.empty(channels[:3]), np.empty(channels[:3])
    sum_dy2 = np.empty(channels[:3]) if single else None
    # x's range per row, for the float32 dx's error bound
    low, high = (np.empty(channels[:2], np.float32) for _ in range(2))
    spans = _sample_spans(rows)

    def block_x(start: int, stop: int, buffer: np.ndarray, centred: bool) -> np.ndarray:
        # x - mean (or x about 0) of a block in float64, viewed as (n, G, C, S).
        count = stop - start
        block = xv[start:stop].reshape(_row_block(rows, count))
        if centred:
            block = _centred(block, mean[start * rows.G:stop * rows.G, None], buffer)
        else:
            block = _as_float64(block, buffer)
        return block.reshape(count, *channels[1:])

    def sums(run: list[tuple[int, int]]) -> None:
        shape = _row_block(rows, run[0][1] - run[0][0])
        work, grad = _scratch_block(shape), _scratch_block(shape, 1)
        with np.errstate(invalid="ignore", over="ignore"):  # errstate is per thread
            for start, stop in run:
                count = stop - start
                d = block_x(start, stop, work[: count * rows.G], not expanded)
                if not single:  # xhat first, as the textbook (see `backward`)
                    np.multiply(d, ivar[start * rows.G:stop * rows.G].reshape(count, rows.G, 1, 1),
                                out=d)
                dy = _as_float64(dyv[start:stop].reshape(_row_block(rows, count)),
                                 grad[: count * rows.G]).reshape(d.shape)
                np.add.reduce(dy, axis=3, out=sum_dy[start:stop])
                _row_products(dy, d, x.dtype, out=sum_dy_d[start:stop])
                if sum_dy2 is not None:  # float32 sums, for the bound (error bounded)
                    block = dyv[start:stop].reshape(d.shape)
                    sum_dy2[start:stop] = np.vecdot(block, block)
                    xs = xv[start:stop].reshape(d.shape)
                    np.min(xs, axis=(2, 3), out=low[start:stop])
                    np.max(xs, axis=(2, 3), out=high[start:stop])

    _run_parallel(sums, _parts(spans))
    mean_r, ivar_r, var_r = (v.reshape(rows.N, rows.G) for v in (mean, ivar, var))
    with np.errstate(invalid="ignore", over="ignore"):
        if expanded:
            sum_dy_d -= mean_r[:, :, None] * sum_dy
        # Sums over the samples in one call each: the same for any thread count. float64's
        # sums are of dy * xhat already, float32's of dy * (x - mean).
        if single:
            dgamma = np.einsum("ngc,ng->gc", sum_dy_d, ivar_r).reshape(-1)
            c = np.einsum("ngc,gc->ng", sum_dy_d, gamma) * ivar_r / width  # mean(g * xhat)
        else:
            dgamma = np.add.reduce(sum_dy_d, axis=0).reshape(-1)
            c = np.einsum("ngc,gc->ng", sum_dy_d, gamma) / width
        dbeta = np.add.reduce(sum_dy, axis=0).reshape(-1)
        m = np.einsum("ngc,gc->ng", sum_dy, gamma) / width  # mean(g)
        scale = ivar_r[:, :, None] * gamma  # a, per channel
        slope_of_xhat = ivar_r * c
        slope = ivar_r * slope_of_xhat  # k, per row
        offset = ivar_r * m
        # ivar^2 * c past float64's range (a tiny eps over a tiny variance: over; x ~ 1e111
        # with dy ~ 1e-152: under) where ivar * c is not: dx takes xhat first, then ivar * c.
        lost = ((~np.isfinite(slope) & np.isfinite(slope_of_xhat))
                | ((np.abs(slope) < _TINY64) & (slope_of_xhat != 0)))
        xhat_first = bool(np.any(lost))
        if xhat_first:
            slope = slope_of_xhat
    dx = np.empty(x.shape, x.dtype)
    dxv = dx.reshape(channels)
    if single and not xhat_first:
        folded = bool(np.all(np.abs(mean_r) * ivar_r <= 1.0))
        with np.errstate(all="ignore"):
            mean_square = np.einsum("ngc,gc->ng", sum_dy2, gamma * gamma) / width
            bound = float32_dx_bound(m, c, mean_square, mean_r, var_r, ivar_r, ivar_r,
                                     low.astype(np.float64), high.astype(np.float64), width,
                                     folded, scaled_first=True, square_terms=rows.S)
        if bound <= FLOAT32_DX_BOUND and float32_factors_fit(scale, slope, offset,
                                                            offset - slope * mean_r) \
                and (folded or mean_split_fits(mean_r)):
            row_dx_float32(x.reshape(channels), upstream.reshape(channels), scale, slope,
                           offset, mean_r, folded, dxv, spans)
            return dx, dgamma, dbeta
    slope_b, scale_b, offset_b = slope[:, :, None, None], scale[..., None], offset[:, :, None, None]
    ivar_b = ivar_r[:, :, None, None]

    def combine(run: list[tuple[int, int]]) -> None:
        shape = _row_block(rows, run[0][1] - run[0][0])
        work, grad = _scratch_block(shape), _scratch_block(shape, 1)
        with np.errstate(invalid="ignore", over="ignore"):
            for start, stop in run:
                count = stop - start
                d = block_x(start, stop, work[: count * rows.G], True)
                if xhat_first:
                    np.multiply(d, ivar_b[start:stop], out=d)
                np.multiply(d, slope_b[start:stop], out=d)
                # Into the scratch block: float64 dy is the caller's array itself.
                g = grad[: count * rows.G].reshape(d.shape)
                np.multiply(dyv[start:stop].reshape(d.shape), scale_b[start:stop], out=g)
                np.subtract(g, d, out=g)
                target = dxv[start:stop]
                if target.dtype == np.float64:
                    np.subtract(g, offset_b[start:stop], out=target)
                else:
                    _store(np.subtract(g, offset_b[start:stop], out=g), target)

    _run_parallel(combine, _parts(spans))
    return dx, dgamma, dbeta


def row_dx_float32(x: np.ndarray, dy: np.ndarray, scale: np.ndarray, slope: np.ndarray,
                   offset: np.ndarray, mean: np.ndarray, folded: bool, dx: np.ndarray,
                   spans: list[tuple[int, int]]) -> None:
    """dx = scale * dy - slope * (x - mean) - offset worked in float32, into dx, by blocks of
    samples; x, dy, dx float32 (N, G, C, S), scale (N, G, C), slope, offset and mean (N, G)
    float64. Exact where `float32_dx_bound` says so; x - mean as in `dx_float32` (hi - lo,
    or about 0 when `folded`: offset - slope * mean then goes into the offset)."""
    single = np.float32
    scale32 = scale.astype(single)[..., None]
    slope32, offset32, hi, lo = _float32_factors(slope, offset, mean, folded,
                                                 slope.shape + (1, 1))

    def run(run_: list[tuple[int, int]]) -> None:
        samples = run_[0][1] - run_[0][0]
        # A float32 temporary in the thread's float64 scratch block (half of it).
        scratch = _scratch_block((samples * x[0].size // 2 + 1,)).view(single)
        with np.errstate(invalid="ignore", over="ignore", under="ignore"):  # per thread
            for start, stop in run_:
                t = dx[start:stop]
                u = scratch[: t.size].reshape(t.shape)
                _slope_times_centred(x[start:stop], slope32[start:stop],
                                     None if folded else hi[start:stop],
                                     None if folded else lo[start:stop], t)
                np.multiply(dy[start:stop], scale32[start:stop], out=u)
                np.subtract(u, t, out=t)
                np.subtract(t, offset32[start:stop], out=t)

    _run_parallel(run, _parts(spans))

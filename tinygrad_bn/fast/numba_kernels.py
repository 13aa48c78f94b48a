"""The fused normalizations' passes compiled with numba (the `[fast]` extra).

Imported by `fast/norm.py` on the first normalization that can use it, never by
`import tinygrad_bn`. Two layouts cover the whole family:

- **columns** (batch and spatial batch norm): x viewed as (A, K) or (A, K, B), one
  statistic per feature k over A (and B). Forward: one pass for the statistics, one to
  normalize; backward: one pass for both sums (over dy and dy * xhat), one for dx (the
  second pass of each direction starts on the rows the first left in cache). Spatial
  batch norm whose channel (A segments of B values) fits `CHANNEL_BYTES` goes channel by
  channel instead: the training-mode forward takes a channel's mean, its centred sums and
  its output while the channel is in cache, the backward its two sums and its dx, so memory
  is read once each way. (Batch norm's few columns of every row would be one cache line
  per row: measured several times slower than streaming whole rows, so it keeps the passes.)
- **rows** (layer and group norm): x viewed as (N * G, C * S), one statistic per row (n, g)
  over its C * S values, gamma and beta per (g, c). A row is in cache once read, so each
  pass reads memory once: the statistics (one pass over the row about a shift sampled from
  it), the training-mode forward (the row's statistics, then its output) and the backward
  (the row's sums, then its dx).

Compute: every inner loop runs over a contiguous slice from index 0, so that it compiles to
packed SIMD instructions; nothing a loop uses per row or per feature is divided or square-
rooted inside it (see `_ratio`); sums go in short blocks whose SIMD lanes make them pairwise
in effect, the blocks carried, rather than a two-sum per element.

Exactness, on every input the textbook core handles: every value is worked in float64
(float32 data is converted as it is read, results are rounded once when stored), and no
formula cancels. One exception, where it is proven as exact: the float32 dx of batch norm's
(A, K) columns and of group norm's rows is worked in float32 (no conversions, twice the SIMD
lanes) where the numpy passes' error bound (`kernels.float32_dx_bound`, compiled a statistic
at a time from the same terms) puts every statistic's dx within a few eps32 of the exact one,
judged from the float64 sums (and sum(dy^2)) the pass takes anyway; elsewhere in float64.
The statistics are taken about a shift close to the mean (the mean of a
few leading rows for columns, of a few of the row's own values for rows, the channel's
own first-pass mean for channels) and corrected by the mean of the shifted values, so a
mean far from zero costs no digits; when the shift turns out far from the mean
(adversarial data), a second pass about the mean itself follows. The
backward multiplies by xhat = (x - mean) * ivar, never by ivar^2 * sum(dy * (x -
mean)), so a variance that overflows (|x| ~ 1e200 in float64) gives the textbook's
finite answer, not inf * 0; xhat is formed as written (`_xhat`), never reordered by
fast-math into dy * (x - mean) or dy * ivar, which overflow where dy * xhat does not.
Sums are partial sums over chunks fixed by the shape, added in a fixed order, or a row's or
a channel's own sums taken by one thread: the result does not depend on the thread count.

Safety: numba's parallel loops run on one threading layer per process. Not every layer can
be entered from two Python threads at once (workqueue aborts), so calls are serialized;
GNU OpenMP cannot run in a child forked after it ran in the parent, which `fork_safe` tells.
Compiled code is cached on disk in a private folder (`compile_cache.py`), and without one,
the passes are compiled in memory; any failure of the cache is a miss, never an error.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import prange

from . import kernels
from .compile_cache import cached_njit
from .kernels import FAR_SHIFT, LEAD_ROWS, Layout, RowLayout, combine_moments, lead_shift

__all__ = ["fork_safe", "column_statistics", "column_normalize", "column_backward",
           "column_forward_with_statistics", "by_channel",
           "row_statistics_of", "row_normalize_of", "row_forward_of", "row_backward_of", "CHUNKS"]

CHUNKS = 64  # partial sums per statistic: enough to keep every thread busy, fixed for determinism
CHUNK_ELEMENTS = 1 << 15  # at least this many elements per chunk: small inputs take few chunks
# A spatial channel (A * B values) up to this size is worked whole while in cache: half of
# L2 here, so the backward's dy and x of one channel per thread stay within L2 and L3.
CHANNEL_BYTES = 1 << 19
CHANNEL_MIN_INNER = 16  # shorter segments than this leave the channel passes' SIMD loops idle
_FASTMATH = {"reassoc", "nsz", "contract"}  # SIMD sums; never assumes finite values
_lock = threading.Lock()


def fork_safe() -> bool:
    """Whether a forked child may run these passes (not after GNU OpenMP ran here)."""
    try:
        return numba.threading_layer() != "omp"
    except ValueError:  # no parallel loop has run yet: no layer was started
        return True


def _compile(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """njit(parallel=True) with the private disk cache (`compile_cache`), else in memory."""
    return cached_njit(parallel=True, **options)


# --- columns: x as (A, K) or (A, K, B), statistics per feature k ---------------------
# (A, K)'s sums take four rows at a time, so that a feature's two running sums are loaded
# and stored once per four values, not once per value (which made the float32 sums
# compute-bound, slower than reading x). The four rows are a page apart (`_row_step`):
# four rows of one page read side by side are streams the hardware prefetcher loses, and
# measured slower than one row at a time. Each chunk of rows sums into a partial of its
# own, no chunk longer than about `CHUNK_ROWS` rows (a few features over a million rows
# take thousands of chunks, not one running sum each), and the partials are added in an
# order fixed by the shape: the same bits on any thread count. Many partials (a few
# features over many rows, which the textbook sums pairwise) are added with their rounding
# carried (`_column_total`), so that only each chunk's short running sum (of 16 four-row
# sums for one feature) rounds: partials of 256 rows added pairwise left dgamma of one
# feature over a million rows 12 eps off, the textbook's pairwise sum 3. The second pass
# of each direction (normalize, dx) takes each thread's rows in blocks of
# `REVERSED_BLOCK_BYTES`, last block first, rows in order inside a block: it starts on the
# rows the first pass left in the shared cache and still streams forward (rows taken one
# by one last first measured slower than in order).
#
# A product of three factors is never left to fast-math to reorder: dy * xhat with xhat =
# (x - mean) * ivar reordered as (dy * ivar) * (x - mean) overflows where dy is near the
# float64 limit and ivar > 1 (or dy * (x - mean) where |x| ~ 1e100), inf - inf = NaN where
# the textbook is finite. xhat and dx are taken by helpers compiled without fast-math
# (`_xhat`, `_dx_value`), inlined into the SIMD loops as they are.
PAGE_BYTES = 4096
REVERSED_BLOCK_BYTES = 1 << 18
CHUNK_ROWS = 64
CHUNK_PARTIALS = 1 << 15  # budget of partial values per sum (chunks * features)
SHIFT_BITS = 26  # significant bits of a column shift (`_short`)
SPLIT = 2.0 ** (53 - SHIFT_BITS) + 1.0  # Veltkamp's constant for that split


@cached_njit(fastmath=_FASTMATH, inline="always")
def _chunk_sums2(x, shift, step, lo, hi, t1, t2):  # pragma: no cover - compiled
    """The sums of d = x - shift and d^2 over rows lo..hi of (A, K) into t1, t2 (K,)."""
    features = x.shape[1]
    a = lo
    while a + 4 * step <= hi:  # rows a + i + {0, 1, 2, 3} * step, i < step
        for i in range(a, a + step):
            for k in range(features):
                m = shift[k]
                d0 = np.float64(x[i, k]) - m
                d1 = np.float64(x[i + step, k]) - m
                d2 = np.float64(x[i + 2 * step, k]) - m
                d3 = np.float64(x[i + 3 * step, k]) - m
                t1[k] += (d0 + d1) + (d2 + d3)
                t2[k] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        a += 4 * step
    for i in range(a, hi):
        for k in range(features):
            d = np.float64(x[i, k]) - shift[k]
            t1[k] += d
            t2[k] += d * d


@_compile(fastmath=_FASTMATH)
def col_sums2(x, shift, step):  # pragma: no cover - compiled
    rows, features = x.shape
    chunks = _chunks(rows, features, x.size)
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        _chunk_sums2(x, shift, step, c * rows // chunks, (c + 1) * rows // chunks, s1[c], s2[c])
    return s1, s2


# (after the first `_compile`, which picks the cache folder these plain ones use too)
@cached_njit("float64(float64, float64, float64)")
def _xhat(x, mean, ivar):  # pragma: no cover - compiled
    """(x - mean) * ivar, rounded as written: without fast-math, so that a product with it is
    never reordered into one that overflows."""
    return (x - mean) * ivar


@cached_njit()
def _chunks(rows, features, size):  # pragma: no cover - compiled
    """How many chunks of rows the sums passes take: fixed by the shape alone."""
    few = max(1, min(rows, CHUNKS, size // CHUNK_ELEMENTS))
    return max(few, min(rows, -(-rows // CHUNK_ROWS), CHUNK_PARTIALS // max(1, features)))


# The statistics of (A, K) in one call (`col_moments2`): the shift, the sums pass, the
# partials' totals and the moments, each as the numpy steps of `column_statistics` take them
# (the same bits: the lead rows and the partials added in order, then divided), without the
# dozen numpy calls around the pass that cost more than the pass itself on cache-resident
# inputs (batch norm 256x1024: 35 of 80 us).
@cached_njit("float64(float64)")
def _short_value(shift):  # pragma: no cover - compiled
    """`_short` of one value (see there): rounded to SHIFT_BITS significant bits, ties to
    even. Compiled without fast-math: the split below is exact only as written."""
    if 2.0 ** -900 <= abs(shift) < 2.0 ** 900:
        # Veltkamp's split: the nearest value of 53 - 27 = 26 bits, ties to even (as rint),
        # in three operations; far from 1 the product would leave the range, so frexp there.
        big = shift * SPLIT
        return big - (big - shift)
    if shift == 0.0 or not np.isfinite(shift):
        return shift
    fraction, exponent = math.frexp(shift)
    return math.ldexp(np.rint(fraction * 2.0 ** SHIFT_BITS), exponent - SHIFT_BITS)


@cached_njit("float64[::1](float32[:, ::1], int64)", "float64[::1](float64[:, ::1], int64)")
def _lead_shift2(x, lead):  # pragma: no cover - compiled
    """The mean of the first `lead` rows per feature, added in row order and divided, as
    numpy's mean over axis 0 takes it; each rounded by `_short_value`."""
    features = x.shape[1]
    shift = np.zeros(features)
    for a in range(lead):
        row = x[a]
        for k in range(features):
            shift[k] += np.float64(row[k])
    for k in range(features):
        shift[k] /= lead
    for k in range(features):
        shift[k] = _short_value(shift[k])
    return shift


@cached_njit("float64[::1](float64[:, ::1])")
def _in_order(parts):  # pragma: no cover - compiled
    """The sum over axis 0 of (chunks, K) partials, added in order, as numpy's sum over axis 0
    of a C-contiguous array adds them: a chunk at a time, the loop over features in SIMD."""
    total = parts[0].copy()
    for c in range(1, parts.shape[0]):
        part = parts[c]
        for k in range(total.size):
            total[k] += part[k]
    return total


@cached_njit("Tuple((float64[::1], float64[::1], boolean))(float64[:, ::1], float64[:, ::1], "
             "float64[::1], int64, float64)")
def _moments_of_parts(s1, s2, shift, count, far):  # pragma: no cover - compiled
    """`combine_moments` of the partial sums (chunks, K) added in order (numpy's sum over axis
    0), without its rounding carried: mean, variance, and whether the shift was far."""
    features = s1.shape[1]
    t1, t2 = _in_order(s1), _in_order(s2)
    mean = np.empty(features)
    var = np.empty(features)
    far_ones = 0
    for k in range(features):  # no branch: the loop stays in SIMD lanes
        m1 = t1[k] / count
        e2 = t2[k] / count
        square = m1 * m1
        v = max(e2 - square, 0.0)
        v = e2 if e2 == np.inf else v
        var[k] = v
        far_ones += square > far * v
        mean[k] = shift[k] + m1
    return mean, var, far_ones > 0


@_compile(fastmath=_FASTMATH)
def col_moments2(x, step, far):  # pragma: no cover - compiled
    # (mean, var, again), or again = True with nothing else (the caller's loop takes over)
    # where the partials are many (`_column_total` carries them) or the shift was far.
    rows, features = x.shape
    chunks = _chunks(rows, features, x.size)
    shift = _lead_shift2(x, min(rows, LEAD_ROWS))
    if chunks > CHUNKS:
        return shift, shift, True
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        _chunk_sums2(x, shift, step, c * rows // chunks, (c + 1) * rows // chunks, s1[c], s2[c])
    return _moments_of_parts(s1, s2, shift, rows, far)


@_compile(fastmath=_FASTMATH)
def col_sums3(x, shift):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    chunks = _chunks(rows, features, x.size)
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        for a in range(c * rows // chunks, (c + 1) * rows // chunks):
            for k in range(features):
                t1, t2 = _row_sums(x[a, k], shift[k])
                s1[c, k] += t1
                s2[c, k] += t2
    return s1, s2


@_compile(fastmath=_FASTMATH)
def col_normalize2(x, mean, scale, beta, out, parts, block):  # pragma: no cover - compiled
    rows, features = x.shape
    for p in prange(parts):
        lo, hi = p * rows // parts, (p + 1) * rows // parts
        for top in range(hi, lo, -block):  # last block first, see above
            for a in range(max(lo, top - block), top):
                for k in range(features):
                    out[a, k] = (np.float64(x[a, k]) - mean[k]) * scale[k] + beta[k]


@_compile(fastmath=_FASTMATH)
def col_normalize3(x, mean, scale, beta, out, parts, block):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    for p in prange(parts):
        lo, hi = p * rows // parts, (p + 1) * rows // parts
        for top in range(hi, lo, -block):
            for a in range(max(lo, top - block), top):
                for k in range(features):
                    m, s, o = mean[k], scale[k], beta[k]
                    values, target = x[a, k], out[a, k]
                    for b in range(inner):
                        target[b] = (np.float64(values[b]) - m) * s + o


@cached_njit(fastmath=_FASTMATH, inline="always")
def _chunk_grad_sums2(dy, x, mean, ivar, step, lo, hi, t1, t2, t3):  # pragma: no cover
    """sum(dy), sum(dy * xhat) and sum(dy^2) over rows lo..hi of (A, K) into t1, t2, t3 (K,)
    (t3 may be empty: not taken). Four rows a page apart, as in `_chunk_sums2`."""
    features = x.shape[1]
    squares = t3.size > 0
    a = lo
    while a + 4 * step <= hi:
        for i in range(a, a + step):
            for k in range(features):
                m, r = mean[k], ivar[k]
                g0 = np.float64(dy[i, k])
                g1 = np.float64(dy[i + step, k])
                g2 = np.float64(dy[i + 2 * step, k])
                g3 = np.float64(dy[i + 3 * step, k])
                t1[k] += (g0 + g1) + (g2 + g3)
                t2[k] += ((g0 * _xhat(np.float64(x[i, k]), m, r)
                           + g1 * _xhat(np.float64(x[i + step, k]), m, r))
                          + (g2 * _xhat(np.float64(x[i + 2 * step, k]), m, r)
                             + g3 * _xhat(np.float64(x[i + 3 * step, k]), m, r)))
                if squares:  # the same for every k: unswitched out of the loop
                    t3[k] += (g0 * g0 + g1 * g1) + (g2 * g2 + g3 * g3)
        a += 4 * step
    for i in range(a, hi):
        for k in range(features):
            g = np.float64(dy[i, k])
            t1[k] += g
            t2[k] += g * _xhat(np.float64(x[i, k]), mean[k], ivar[k])
            if squares:
                t3[k] += g * g


@_compile(fastmath=_FASTMATH)
def col_grad_sums2(dy, x, mean, ivar, step):  # pragma: no cover - compiled
    rows, features = x.shape
    chunks = _chunks(rows, features, x.size)
    s_dy = np.zeros((chunks, features))
    s_dy_xhat = np.zeros((chunks, features))
    none = np.zeros(0)
    for c in prange(chunks):
        _chunk_grad_sums2(dy, x, mean, ivar, step, c * rows // chunks, (c + 1) * rows // chunks,
                          s_dy[c], s_dy_xhat[c], none)
    return s_dy, s_dy_xhat


@_compile(fastmath=_FASTMATH)
def col_grad_totals2(dy, x, mean, ivar, step, squares):  # pragma: no cover - compiled
    # What `col_grad_sums2`, then `_column_total` of each give, for up to CHUNKS partials:
    # dbeta = sum(dy), dgamma = sum(dy * xhat) (K,), the partials added in order; and, when
    # `squares`, sum(dy^2) (K,) for the float32 dx's bound (else an empty array).
    rows, features = x.shape
    chunks = _chunks(rows, features, x.size)
    s_dy = np.zeros((chunks, features))
    s_dy_xhat = np.zeros((chunks, features))
    s_dy2 = np.zeros((chunks, features if squares else 0))
    for c in prange(chunks):
        _chunk_grad_sums2(dy, x, mean, ivar, step, c * rows // chunks, (c + 1) * rows // chunks,
                          s_dy[c], s_dy_xhat[c], s_dy2[c])
    return _in_order(s_dy), _in_order(s_dy_xhat), _in_order(s_dy2)


@_compile(fastmath=_FASTMATH)
def col_range2(x):  # pragma: no cover - compiled
    # The least and the largest value of each feature of (A, K), float64 (K,).
    rows, features = x.shape
    chunks = _chunks(rows, features, x.size)
    low = np.empty((chunks, features))
    high = np.empty((chunks, features))
    for c in prange(chunks):
        lo, hi = c * rows // chunks, (c + 1) * rows // chunks
        least, most = low[c], high[c]
        first = x[lo]
        for k in range(features):
            least[k] = most[k] = np.float64(first[k])
        for a in range(lo + 1, hi):
            row = x[a]
            for k in range(features):
                value = np.float64(row[k])
                least[k] = min(least[k], value)
                most[k] = max(most[k], value)
    for c in range(1, chunks):
        for k in range(features):
            low[0, k] = min(low[0, k], low[c, k])
            high[0, k] = max(high[0, k], high[c, k])
    return low[0].copy(), high[0].copy()


# The float32 dx of the columns, worked in float32 (16 SIMD lanes, no conversions) where
# `kernels.float32_dx_bound` puts every feature's dx within `kernels.FLOAT32_DX_BOUND` eps32
# of the exact one (normwise over the feature's values), as the numpy passes' `dx_float32`:
# dx = scale * (dy - mean(dy) - (x - hi - lo) * slope), hi + lo the float64 mean in two
# float32s, or about 0 when every |mean| is within a standard deviation of 0 (`folded`). The
# bound and the factors' range check are the numpy passes' own functions, compiled.
# Compiled eagerly, on their own options (no fast-math), as `_carry_add` below: lazily, a
# function takes the options of its first caller, and a bound reassociated is no bound.
_dx_bound_terms = cached_njit(
    "Tuple((float64, boolean))(float64, float64, float64, float64, float64, float64, float64, "
    "float64, float64, boolean, int64, boolean, boolean, int64)",
    error_model="numpy")(kernels.dx_bound_terms)
_split_fits = cached_njit("boolean(float64, float32, float32)")(kernels.split_fits)


@cached_njit(error_model="numpy")
def _float32_dx_factors(dbeta, dgamma, sum_dy2, gamma, mean, var, ivar, count, low, high,
                        ranged):  # pragma: no cover - compiled
    """(whether the float32 dx is exact, folded, and its float32 factors scale, slope,
    offset, hi, lo (K,)), from the float64 sums and statistics (K,); low, high: each
    feature's range where `ranged` (else the bound takes max |xhat| <= sqrt(count)). The
    bound is `kernels.float32_dx_bound` taken a feature at a time through the same terms
    (`kernels.dx_bound_terms`), and the factors' check `kernels.float32_factors_fit`'s:
    its array expressions, compiled, cost 30 us for 1024 features, this loop a few."""
    features = mean.size
    folded = True
    for k in range(features):
        folded = folded and abs(mean[k]) * ivar[k] <= 1.0
    scale = np.empty(features, np.float32)
    slope = np.empty(features, np.float32)
    offset = np.empty(features, np.float32)
    hi = np.empty(features, np.float32)
    lo = np.empty(features, np.float32)
    worst = 0.0
    for k in range(features):
        m = dbeta[k] / count
        c = dgamma[k] / count
        weight = gamma[k] * ivar[k]
        ratio, in_range = _dx_bound_terms(m, c, sum_dy2[k] / count, mean[k], var[k], ivar[k],
                                          weight, low[k], high[k], ranged, count, folded,
                                          False, 0)
        if not in_range:
            return False, folded, scale, slope, offset, hi, lo
        worst = max(worst, ratio)
        k_slope = ivar[k] * c  # xhat * mean(dy * xhat) = (x - mean) * slope
        folded_offset = m - mean[k] * k_slope
        for value in (weight, k_slope, m, folded_offset):
            size = abs(value)
            if not (size == 0.0 or 2.0**-100 <= size <= 2.0**100):
                return False, folded, scale, slope, offset, hi, lo
        scale[k] = np.float32(weight)
        slope[k] = np.float32(k_slope)
        offset[k] = np.float32(folded_offset if folded else m)
        hi[k] = np.float32(mean[k])
        lo[k] = np.float32(mean[k] - np.float64(hi[k]))
        if not folded and not _split_fits(mean[k], hi[k], lo[k]):  # lo subnormal
            return False, folded, scale, slope, offset, hi, lo
    return 1.0 + worst <= kernels.FLOAT32_DX_BOUND, folded, scale, slope, offset, hi, lo


@_compile()
def col_dx2_float32(dy, x, scale, slope, offset, hi, lo, folded, dx, parts, block
                    ):  # pragma: no cover - compiled
    # Without fast-math: each float32 operation rounds as written, as the bound counts them
    # (reassociated, x - hi - lo would lose the exactness of x - hi).
    rows, features = x.shape
    for p in prange(parts):
        start, stop = p * rows // parts, (p + 1) * rows // parts
        for top in range(stop, start, -block):  # last block first, as `col_dx2`
            for a in range(max(start, top - block), top):
                xs, gs, ds = x[a], dy[a], dx[a]
                if folded:
                    for k in range(features):
                        ds[k] = ((gs[k] - xs[k] * slope[k]) - offset[k]) * scale[k]
                else:
                    for k in range(features):
                        ds[k] = ((gs[k] - ((xs[k] - hi[k]) - lo[k]) * slope[k])
                                 - offset[k]) * scale[k]


@cached_njit(fastmath=_FASTMATH, inline="always")
def _grad_block_sums(dy, x, m, q, squares):  # pragma: no cover - compiled
    """sum(dy), sum(dy * xhat) and, when `squares`, sum(dy^2) over a short contiguous slice,
    in SIMD lanes."""
    t_dy = 0.0
    t_dyx = 0.0
    t_dy2 = 0.0
    for s in range(x.size):
        d = np.float64(dy[s])
        t_dy += d
        t_dyx += d * _xhat(np.float64(x[s]), m, q)
        if squares:  # the same for the whole loop: unswitched out of it
            t_dy2 += d * d
    return t_dy, t_dyx, t_dy2


@cached_njit(fastmath=_FASTMATH)
def _grad_sums(dy, x, m, q, squares=False):  # pragma: no cover - compiled
    """sum(dy), sum(dy * xhat) and, when `squares`, sum(dy^2) (else 0) over a contiguous
    slice, in blocks, carried."""
    t_dy = k_dy = t_dyx = k_dyx = t_dy2 = k_dy2 = 0.0
    for block in range(-(-x.size // SUM_BLOCK)):
        lo = block * SUM_BLOCK
        b_dy, b_dyx, b_dy2 = _grad_block_sums(dy[lo:lo + SUM_BLOCK], x[lo:lo + SUM_BLOCK], m, q,
                                              squares)
        t_dy, k_dy = _carry_add(t_dy, k_dy, b_dy)
        t_dyx, k_dyx = _carry_add(t_dyx, k_dyx, b_dyx)
        if squares:
            t_dy2, k_dy2 = _carry_add(t_dy2, k_dy2, b_dy2)
    return _carried(t_dy, k_dy), _carried(t_dyx, k_dyx), _carried(t_dy2, k_dy2)


@_compile(fastmath=_FASTMATH)
def col_grad_sums3(dy, x, mean, ivar):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    chunks = _chunks(rows, features, x.size)
    s_dy = np.zeros((chunks, features))
    s_dy_xhat = np.zeros((chunks, features))
    for c in prange(chunks):
        for a in range(c * rows // chunks, (c + 1) * rows // chunks):
            for k in range(features):
                t1, t2, _ = _grad_sums(dy[a, k], x[a, k], mean[k], ivar[k])
                s_dy[c, k] += t1
                s_dy_xhat[c, k] += t2
    return s_dy, s_dy_xhat


@_compile(fastmath=_FASTMATH)
def col_dx2(dy, x, mean, ivar, gamma, mean_g, mean_gx, dx, parts, block
            ):  # pragma: no cover - compiled
    # mean_g, mean_gx: the means of g = gamma * dy and of g * xhat per feature
    rows, features = x.shape
    for p in prange(parts):
        lo, hi = p * rows // parts, (p + 1) * rows // parts
        for top in range(hi, lo, -block):  # last block first, see above
            for a in range(max(lo, top - block), top):
                for k in range(features):
                    dx[a, k] = _dx_value(ivar[k], gamma[k] * np.float64(dy[a, k]),
                                         _xhat(np.float64(x[a, k]), mean[k], ivar[k]),
                                         mean_g[k], mean_gx[k])


@_compile(fastmath=_FASTMATH)
def col_dx3(dy, x, mean, ivar, gamma, mean_g, mean_gx, dx, parts, block
            ):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    for p in prange(parts):
        lo, hi = p * rows // parts, (p + 1) * rows // parts
        for top in range(hi, lo, -block):
            for a in range(max(lo, top - block), top):
                for k in range(features):
                    m, r, gam, mg, mgx = mean[k], ivar[k], gamma[k], mean_g[k], mean_gx[k]
                    values, grads, target = x[a, k], dy[a, k], dx[a, k]
                    for b in range(inner):
                        target[b] = _dx_value(r, gam * np.float64(grads[b]),
                                              _xhat(np.float64(values[b]), m, r), mg, mgx)


# Spatial batch norm channel by channel: a channel k is A segments of B contiguous values,
# small enough (`CHANNEL_BYTES`) to stay in cache between the passes over it, so memory is
# read once forward (x) and once backward (dy and x), however many passes the math takes.
# Batch norm's (A, K) columns get no such pass: a few columns of every row are one cache
# line per row, and reading memory that way measured several times slower than a stream.
# A channel's sums add its segments' sums carried (a channel of thousands of short
# segments keeps its digits).
@_compile(fastmath=_FASTMATH)
def channel_forward(x, gamma, beta, eps, out, mean, var):  # pragma: no cover - compiled
    rows, channels, inner = x.shape
    count = rows * inner
    for k in prange(channels):
        total = carry = 0.0
        for a in range(rows):  # the mean (from memory) ...
            total, carry = _carry_add(total, carry, _row_sums(x[a, k], 0.0)[0])
        shift = _ratio(_carried(total, carry), count)
        s1 = k1 = s2 = k2 = 0.0
        for a in range(rows):  # ... then the centred sums, from cache: no cancellation
            t1, t2 = _row_sums(x[a, k], shift)
            s1, k1 = _carry_add(s1, k1, t1)
            s2, k2 = _carry_add(s2, k2, t2)
        m1 = _ratio(_carried(s1, k1), count)
        e2 = _ratio(_carried(s2, k2), count)
        v = max(e2 - m1 * m1, 0.0) if e2 < np.inf else e2  # overflowed: the textbook's inf
        m = shift + m1
        mean[k] = m
        var[k] = v
        scale = gamma[k] * _inv_sqrt(v, eps)
        offset = beta[k]
        for a in range(rows):  # normalized from cache
            values, target = x[a, k], out[a, k]
            for b in range(inner):
                target[b] = (np.float64(values[b]) - m) * scale + offset


@_compile(fastmath=_FASTMATH)
def channel_backward(dy, x, gamma, mean, ivar, dx, dgamma, dbeta):  # pragma: no cover
    rows, channels, inner = x.shape
    count = rows * inner
    for k in prange(channels):
        m, r = mean[k], ivar[k]
        s_dy = k_dy = s_dyx = k_dyx = 0.0
        for a in range(rows):  # both sums (from memory) ...
            t1, t2, _ = _grad_sums(dy[a, k], x[a, k], m, r)
            s_dy, k_dy = _carry_add(s_dy, k_dy, t1)
            s_dyx, k_dyx = _carry_add(s_dyx, k_dyx, t2)
        s_dy, s_dyx = _carried(s_dy, k_dy), _carried(s_dyx, k_dyx)
        dbeta[k] = s_dy
        dgamma[k] = s_dyx
        gam = gamma[k]
        mg, mgx = gam * _ratio(s_dy, count), gam * _ratio(s_dyx, count)
        for a in range(rows):  # ... then dx, from cache
            values, grads, target = x[a, k], dy[a, k], dx[a, k]
            for b in range(inner):
                target[b] = _dx_value(r, gam * np.float64(grads[b]),
                                      _xhat(np.float64(values[b]), m, r), mg, mgx)

# --- rows: x as (N * G, C * S), statistics per row (n, g) ---------------------------
# A row (C channels of S values, gamma and beta per (g, c)) is worked whole by one thread:
# its sums, then its output (or its dx) from cache. Every inner loop runs over a contiguous
# slice (a row, a block, a channel) from index 0, so that it compiles to packed SIMD
# instructions (an index numba cannot prove >= 0 is checked for wraparound, which keeps a
# loop out of SIMD lanes), and every division or square root a loop uses is taken once per
# row by a helper compiled without fast-math (allowed reassociation, the compiler moves
# x * (1 / s) into the loop as x / s: one vector division per element, several times
# slower than the rest of the loop together).
SHIFT_SAMPLES = 32  # about this many values of a row give its shift
ROW_RUNS = 16  # runs of rows of the backward: its dgamma and dbeta partials are per run
ROW_RUN_ELEMENTS = 1 << 15  # at least this many elements per run: small inputs take few
# dgamma and dbeta sum over rows: a partial sum per (about) this many rows of a run, added by
# the caller, so that no running sum is long (a run may hold thousands of rows), within a
# budget of partial values.
ROWS_PER_PARTIAL = 64
PARTIAL_VALUES = 1 << 18
# Sums go in blocks of this many values, each a SIMD sum (several lanes and accumulators:
# pairwise in effect), the blocks added carried (`_carry_add`): a row of thousands of values
# keeps its digits, and one two-sum per block costs nothing next to the block.
SUM_BLOCK = 256


# Compiled eagerly, with their signatures, on their own options: a function numba compiles
# lazily takes the options of its first caller, so, called first from a fast-math pass, these
# were reassociated (the carry folded away to zero, the sums left uncompensated).
@cached_njit("UniTuple(float64, 2)(float64, float64, float64)")
def _carry_add(total, carry, value):  # pragma: no cover - compiled
    """total + value, its rounding error added to carry (Neumaier's two-sum): a long sum
    of blocks loses no more than one block does. Compiled without fast-math on purpose:
    reassociated, the error term is folded away to zero."""
    new = total + value
    if abs(total) >= abs(value):
        carry += (total - new) + value
    else:
        carry += (value - new) + total
    return new, carry


@cached_njit("float64(float64, float64)")
def _carried(total, carry):  # pragma: no cover - compiled
    # A sum that overflowed keeps its inf (its carry is inf - inf, NaN, not an error term).
    return total + carry if carry - carry == 0.0 else total


@cached_njit("UniTuple(float64[:], 2)(float64[:, :])")
def _carried_sums(partials):  # pragma: no cover - compiled
    """The sums over axis 0 of (chunks, K) partial sums, carried in order (fixed by the
    shape): thousands of partials add as if each were exact. Returns the sums and what their
    rounding left out (0 where a sum left float64's range)."""
    chunks, features = partials.shape
    totals = np.empty(features)
    carries = np.empty(features)
    for k in range(features):  # one feature at a time, in registers (few features come here)
        total = carry = 0.0
        for c in range(chunks):  # Knuth's two-sum: no branch (this is compiled as written)
            value = partials[c, k]
            new = total + value
            back = new - total
            carry += (total - (new - back)) + (value - back)
            total = new
        totals[k] = _carried(total, carry)
        carries[k] = carry - (totals[k] - total) if carry - carry == 0.0 else 0.0
    return totals, carries


@cached_njit("float64(float64, float64)")
def _ratio(a, b):  # pragma: no cover - compiled
    """a / b, compiled without fast-math: a per-row quotient stays out of the vector loops."""
    return a / b


@cached_njit("float64(float64, float64)")
def _inv_sqrt(var, eps):  # pragma: no cover - compiled
    """1 / sqrt(var + eps), without fast-math (see `_ratio`)."""
    return 1.0 / np.sqrt(var + eps)


@cached_njit(fastmath=_FASTMATH, inline="always")
def _block_sums(a, shift):  # pragma: no cover - compiled
    """The sums of d = a - shift and d^2 over a short contiguous slice, in SIMD lanes."""
    s1 = 0.0
    s2 = 0.0
    for j in range(a.size):
        d = np.float64(a[j]) - shift
        s1 += d
        s2 += d * d
    return s1, s2


@cached_njit(fastmath=_FASTMATH)
def _row_sums(row, shift):  # pragma: no cover - compiled
    """The sums of d = row - shift and d^2 over a contiguous row, in blocks, carried."""
    s1 = k1 = s2 = k2 = 0.0
    for block in range(-(-row.size // SUM_BLOCK)):
        b1, b2 = _block_sums(row[block * SUM_BLOCK:(block + 1) * SUM_BLOCK], shift)
        s1, k1 = _carry_add(s1, k1, b1)
        s2, k2 = _carry_add(s2, k2, b2)
    return _carried(s1, k1), _carried(s2, k2)


@cached_njit(fastmath=_FASTMATH)
def _shifted_sums(flat, r, shift):  # pragma: no cover - compiled
    """The sums of d = x - shift and d^2 over row r of flat (rows, values)."""
    return _row_sums(flat[r], shift)


@cached_njit(fastmath=_FASTMATH)
def _row_shift(row, channels, inner):  # pragma: no cover - compiled
    """The mean of a few of a row's values, close to the row's mean on real data: its
    first SHIFT_SAMPLES values for layer norm; for group norm the first values of up to
    SHIFT_SAMPLES of its channels, so that channels of different means all count."""
    total = 0.0
    if inner == 1:
        samples = min(channels, SHIFT_SAMPLES)
        for c in range(samples):
            total += np.float64(row[c])
        return _ratio(total, samples)
    step = max(1, channels // SHIFT_SAMPLES)
    per = min(inner, max(1, SHIFT_SAMPLES // channels))
    for k in range(min(channels, SHIFT_SAMPLES)):
        for s in range(per):
            total += np.float64(row[k * step * inner + s])
    return _ratio(total, min(channels, SHIFT_SAMPLES) * per)


@cached_njit(fastmath=_FASTMATH)
def _row_moments(row, shift, far):  # pragma: no cover - compiled
    """A row's float64 mean and biased variance from its sums about `shift`. When the shift
    is not close to the mean (mean(d)^2 > far * var: the digits the shifted formula would
    lose matter, see kernels.FAR_SHIFT) or a sum overflowed (|x| near the float64 limit: a
    far shift times the count may overflow where the mean does not), the sums are taken
    again, from cache, about the row's mean: its sum over the count."""
    count = row.size
    s1, s2 = _row_sums(row, shift)
    m1 = _ratio(s1, count)
    if not (s2 < np.inf and m1 * m1 <= far * max(_ratio(s2, count) - m1 * m1, 0.0)):
        shift = _ratio(_row_sums(row, 0.0)[0], count)
        s1, s2 = _row_sums(row, shift)
        m1 = _ratio(s1, count)
    return shift + m1, (max(_ratio(s2, count) - m1 * m1, 0.0) if s2 < np.inf else s2)


@cached_njit(fastmath=_FASTMATH)
def _normalize_row(row, out, m, q, gamma, beta, g, channels, inner):  # pragma: no cover
    """out = (row - m) * (q * gamma[g]) + beta[g], gamma per value (layer norm, S = 1) or
    per channel (group norm)."""
    if inner == 1:
        gam, bet = gamma[g], beta[g]
        for c in range(channels):
            out[c] = (np.float64(row[c]) - m) * (q * gam[c]) + bet[c]
        return
    for c in range(channels):
        scale, offset = q * gamma[g, c], beta[g, c]
        values = row[c * inner:(c + 1) * inner]
        target = out[c * inner:(c + 1) * inner]
        for s in range(inner):
            target[s] = (np.float64(values[s]) - m) * scale + offset


@_compile(fastmath=_FASTMATH)
def row_statistics(flat, groups, channels, inner, far):  # pragma: no cover - compiled
    rows = flat.shape[0]
    mean = np.empty(rows)
    var = np.empty(rows)
    for r in prange(rows):
        row = flat[r]
        mean[r], var[r] = _row_moments(row, _row_shift(row, channels, inner), far)
    return mean, var


@_compile(fastmath=_FASTMATH)
def row_normalize(flat, groups, channels, inner, mean, var, eps, gamma, beta, out
                  ):  # pragma: no cover - compiled
    for r in prange(flat.shape[0]):
        _normalize_row(flat[r], out[r], mean[r], _inv_sqrt(var[r], eps), gamma, beta,
                       r % groups, channels, inner)


@_compile(fastmath=_FASTMATH)
def row_forward(flat, groups, channels, inner, gamma, beta, eps, far, out
                ):  # pragma: no cover - compiled
    # Each row's statistics, then its output from cache: one read of x from memory in all.
    rows = flat.shape[0]
    mean = np.empty(rows)
    var = np.empty(rows)
    for r in prange(rows):
        row = flat[r]
        m, v = _row_moments(row, _row_shift(row, channels, inner), far)
        mean[r], var[r] = m, v
        _normalize_row(row, out[r], m, _inv_sqrt(v, eps), gamma, beta, r % groups, channels,
                       inner)
    return mean, var


# Eagerly, on its own options, as `_carry_add` (a lazy compile would take the first
# caller's fast-math flags).
@cached_njit("float64(float64, float64, float64, float64, float64)")
def _dx_value(q, gd, xhat, mean_g, mean_gx):  # pragma: no cover - compiled
    """ivar * (g - mean(g) - xhat * mean(g * xhat)) for one value. Compiled without
    fast-math on purpose: allowed reassociation, the compiler folds the row's two divisions
    by the count into the dx loop, one vector division per element; allowed contraction,
    g = gamma * dy is fused into g - mean(g), so that a row of one value (mean(g) = g
    rounded) gets the product's rounding error as its dx instead of the textbook's exact
    zero."""
    return q * (gd - mean_g - xhat * mean_gx)


@cached_njit(fastmath=_FASTMATH)
def _row_grad_sums(dy, x, m, q, gamma, g, channels, inner, dgamma, dbeta, squares
                   ):  # pragma: no cover - compiled
    """sum(g), sum(g * xhat) and, for group norm when `squares`, sum(g^2) (else 0) over a
    row, g = gamma * dy, in blocks, carried; and the row's dy and dy * xhat added to dbeta,
    dgamma (G, C): per value (layer norm), or each channel's sums (group norm)."""
    sum_g = k_g = sum_gx = k_gx = sum_g2 = k_g2 = 0.0
    if inner == 1:
        gam, dg, db = gamma[g], dgamma[g], dbeta[g]
        for block in range(-(-channels // SUM_BLOCK)):
            lo = block * SUM_BLOCK
            hi = min(lo + SUM_BLOCK, channels)
            xs, ds, gs = x[lo:hi], dy[lo:hi], gam[lo:hi]
            dgs, dbs = dg[lo:hi], db[lo:hi]
            b_g = 0.0
            b_gx = 0.0
            for j in range(hi - lo):
                d = np.float64(ds[j])
                xhat = _xhat(np.float64(xs[j]), m, q)
                dbs[j] += d
                dgs[j] += d * xhat
                gd = gs[j] * d
                b_g += gd
                b_gx += gd * xhat
            sum_g, k_g = _carry_add(sum_g, k_g, b_g)
            sum_gx, k_gx = _carry_add(sum_gx, k_gx, b_gx)
        return _carried(sum_g, k_g), _carried(sum_gx, k_gx), 0.0
    for c in range(channels):
        lo, hi = c * inner, (c + 1) * inner
        t_dy, t_dyx, t_dy2 = _grad_sums(dy[lo:hi], x[lo:hi], m, q, squares)
        dbeta[g, c] += t_dy
        dgamma[g, c] += t_dyx
        sum_g, k_g = _carry_add(sum_g, k_g, gamma[g, c] * t_dy)
        sum_gx, k_gx = _carry_add(sum_gx, k_gx, gamma[g, c] * t_dyx)
        sum_g2, k_g2 = _carry_add(sum_g2, k_g2, gamma[g, c] * gamma[g, c] * t_dy2)
    return _carried(sum_g, k_g), _carried(sum_gx, k_gx), _carried(sum_g2, k_g2)


@cached_njit(fastmath=_FASTMATH)
def _layer_grad_sums_pair(dy0, x0, m0, q0, dy1, x1, m1, q1, gamma, dgamma, dbeta
                          ):  # pragma: no cover - compiled
    """What `_row_grad_sums` gives for two rows of layer norm (S = 1, one group), their dy and
    dy * xhat added to dbeta, dgamma in one update per value instead of two."""
    channels = x0.size
    s0 = k0 = sx0 = kx0 = s1 = k1 = sx1 = kx1 = 0.0
    gam, dg, db = gamma[0], dgamma[0], dbeta[0]
    for block in range(-(-channels // SUM_BLOCK)):
        lo = block * SUM_BLOCK
        hi = min(lo + SUM_BLOCK, channels)
        xs0, ds0, xs1, ds1, gs = x0[lo:hi], dy0[lo:hi], x1[lo:hi], dy1[lo:hi], gam[lo:hi]
        dgs, dbs = dg[lo:hi], db[lo:hi]
        b0 = bx0 = b1 = bx1 = 0.0
        for j in range(hi - lo):
            d0 = np.float64(ds0[j])
            d1 = np.float64(ds1[j])
            xhat0 = _xhat(np.float64(xs0[j]), m0, q0)
            xhat1 = _xhat(np.float64(xs1[j]), m1, q1)
            dbs[j] += d0 + d1
            dgs[j] += d0 * xhat0 + d1 * xhat1
            g0 = gs[j] * d0
            g1 = gs[j] * d1
            b0 += g0
            bx0 += g0 * xhat0
            b1 += g1
            bx1 += g1 * xhat1
        s0, k0 = _carry_add(s0, k0, b0)
        sx0, kx0 = _carry_add(sx0, kx0, bx0)
        s1, k1 = _carry_add(s1, k1, b1)
        sx1, kx1 = _carry_add(sx1, kx1, bx1)
    return _carried(s0, k0), _carried(sx0, kx0), _carried(s1, k1), _carried(sx1, kx1)


@cached_njit(fastmath=_FASTMATH)
def _row_dx(dy, x, m, q, gamma, g, channels, inner, mean_g, mean_gx, dx
            ):  # pragma: no cover - compiled
    """dx of a row from its means of g and g * xhat."""
    if inner == 1:
        gam = gamma[g]
        for c in range(channels):
            dx[c] = _dx_value(q, gam[c] * np.float64(dy[c]), _xhat(np.float64(x[c]), m, q),
                              mean_g, mean_gx)
        return
    for c in range(channels):
        scale = gamma[g, c]
        xs, ds = x[c * inner:(c + 1) * inner], dy[c * inner:(c + 1) * inner]
        target = dx[c * inner:(c + 1) * inner]
        for s in range(inner):
            target[s] = _dx_value(q, scale * np.float64(ds[s]), _xhat(np.float64(xs[s]), m, q),
                                  mean_g, mean_gx)


@cached_njit()
def _gamma_range(gamma):  # pragma: no cover - compiled
    """Per group (G, 2): the least nonzero |gamma| (0 when all are 0) and the largest."""
    groups, channels = gamma.shape
    found = np.zeros((groups, 2))
    for g in range(groups):
        least = np.inf
        most = 0.0
        for c in range(channels):
            size = abs(gamma[g, c])
            if size != 0.0:
                least = min(least, size)
            most = max(most, size)
        found[g, 0] = least if least < np.inf else 0.0
        found[g, 1] = most
    return found


# Eagerly, without fast-math (see `_dx_bound_terms`): reassociated, x - hi - lo becomes
# x - (hi + lo), which loses the digits the split keeps (group norm about 1e5: 56 eps32 off).
# The float64 signature is never run (the caller's float32 test is made at run time).
_ROW_DX_FLOAT32 = ("boolean({0}[::1], {0}[::1], float64, float64, float64, float64[:, ::1], "
                   "float64[:, ::1], int64, int64, int64, float64, float64, float64, int64, "
                   "{0}[::1], boolean)")


@cached_njit(_ROW_DX_FLOAT32.format("float32"), _ROW_DX_FLOAT32.format("float64"),
             error_model="numpy")
def _row_dx_float32(dy, x, m, q, v, gamma, gamma_range, g, channels, inner, sum_g, sum_gx,
                    sum_g2, count, dx, ranged):  # pragma: no cover - compiled
    """A group norm row's dx worked in float32, as the numpy passes' `row_dx_float32`, where the
    bound (`kernels.dx_bound_terms`, g formed in float32 first) puts it within
    `kernels.FLOAT32_DX_BOUND` eps32 of the exact dx: dx = dy * scale - slope * (x - hi - lo)
    - offset, scale = ivar * gamma per channel, slope = ivar^2 mean(g * xhat), offset = ivar
    mean(g), hi + lo the row's mean in two float32s (or about 0, `folded`). Returns whether it
    did (else nothing is written). `ranged`: the bound takes the row's least and largest x
    (read again, from cache) instead of max |xhat| <= sqrt(count). Compiled without
    fast-math: each float32 operation rounds as the bound counts it."""
    mean_g, mean_gx = sum_g / count, sum_gx / count
    folded = abs(m) * q <= 1.0
    low = high = m
    if ranged:
        low = high = np.float64(x[0])
        for j in range(x.size):
            value = np.float64(x[j])
            low = min(low, value)
            high = max(high, value)
    ratio, in_range = _dx_bound_terms(mean_g, mean_gx, sum_g2 / count, m, v, q, q, low, high,
                                      ranged, count, folded, True, 0)
    if not (in_range and 1.0 + ratio <= kernels.FLOAT32_DX_BOUND):
        return False
    slope_of_xhat = q * mean_gx
    slope = q * slope_of_xhat
    offset = q * mean_g
    folded_offset = offset - slope * m
    if slope == 0.0 and slope_of_xhat != 0.0:  # ivar^2 * c lost below float64's range
        return False
    # Each factor 0 or within [2^-100, 2^100] (`kernels.float32_factors_fit`); the scales
    # q * gamma through this group's least nonzero and largest |gamma| (`gamma_range`):
    # rounding keeps their order, so the extremes decide for every channel.
    for value in (slope, offset, folded_offset, q * gamma_range[g, 0], q * gamma_range[g, 1]):
        size = abs(value)
        if not (size == 0.0 or 2.0**-100 <= size <= 2.0**100):
            return False
    slope32 = np.float32(slope)
    hi = np.float32(m)
    lo = np.float32(m - np.float64(hi))
    if not folded and not _split_fits(m, hi, lo):  # lo subnormal: `kernels.mean_split_fits`
        return False
    offset32 = np.float32(folded_offset if folded else offset)
    for c in range(channels):
        s32 = np.float32(q * gamma[g, c])
        xs, ds = x[c * inner:(c + 1) * inner], dy[c * inner:(c + 1) * inner]
        target = dx[c * inner:(c + 1) * inner]
        if folded:
            for s in range(inner):
                target[s] = (ds[s] * s32 - xs[s] * slope32) - offset32
        else:
            for s in range(inner):
                target[s] = (ds[s] * s32 - ((xs[s] - hi) - lo) * slope32) - offset32
    return True


@cached_njit()
def _any_row_dx(dy, x, m, q, v, gamma, gamma_range, g, channels, inner, sum_g, sum_gx,
                sum_g2, count, single, dx):  # pragma: no cover - compiled
    """The row's dx: for float32 group norm in float32 where its bound holds (first with max
    |xhat| <= sqrt(count), then with the row's range), else worked in float64 (`_row_dx`).
    (Layer norm's scale per value, formed in float32 row by row, left its float32 dx no faster
    than this one: measured.)"""
    if single and inner > 1 and (
            _row_dx_float32(dy, x, m, q, v, gamma, gamma_range, g, channels, inner, sum_g,
                            sum_gx, sum_g2, count, dx, False)
            or _row_dx_float32(dy, x, m, q, v, gamma, gamma_range, g, channels, inner, sum_g,
                               sum_gx, sum_g2, count, dx, True)):
        return
    _row_dx(dy, x, m, q, gamma, g, channels, inner, _ratio(sum_g, count),
            _ratio(sum_gx, count), dx)


@cached_njit()
def _runs(rows, size):  # pragma: no cover - compiled
    """How many runs of consecutive rows the backward takes: fixed by the shape alone, so
    that its partial sums do not depend on the threads."""
    return max(1, min(rows, ROW_RUNS, size // ROW_RUN_ELEMENTS))


@_compile(fastmath=_FASTMATH)
def row_backward(dy, x, groups, channels, inner, mean, var, eps, gamma, dx, single
                 ):  # pragma: no cover - compiled
    # Per row its sums, then its dx from cache (float32 data: in float32 where its bound
    # holds, `_any_row_dx`); dgamma and dbeta as partial sums per part of a run of rows, added
    # in order at the end.
    rows = x.shape[0]
    count = x.shape[1]
    runs = _runs(rows, x.size)
    # partials per run: fixed by the shape, so the sums do not depend on the thread count
    per_run = max(1, min(-(-rows // (runs * ROWS_PER_PARTIAL)),
                         PARTIAL_VALUES // (runs * groups * channels)))
    dgamma = np.zeros((runs * per_run, groups, channels))
    dbeta = np.zeros((runs * per_run, groups, channels))
    paired = inner == 1 and groups == 1  # layer norm: two rows per dgamma, dbeta update
    gamma_range = _gamma_range(gamma)
    for run in prange(runs):
        start, stop = run * rows // runs, (run + 1) * rows // runs
        r = start
        while r < stop:
            partial = run * per_run + (r - start) * per_run // (stop - start)
            q = _inv_sqrt(var[r], eps)
            if paired and r + 1 < stop and (
                    run * per_run + (r + 1 - start) * per_run // (stop - start) == partial):
                q1 = _inv_sqrt(var[r + 1], eps)
                sum_g, sum_gx, sum_g1, sum_gx1 = _layer_grad_sums_pair(
                    dy[r], x[r], mean[r], q, dy[r + 1], x[r + 1], mean[r + 1], q1, gamma,
                    dgamma[partial], dbeta[partial])
                sum_g2 = 0.0  # (layer norm: no float32 dx, see `_any_row_dx`)
                _any_row_dx(dy[r + 1], x[r + 1], mean[r + 1], q1, var[r + 1], gamma,
                            gamma_range, 0, channels, inner, sum_g1, sum_gx1, 0.0, count,
                            single, dx[r + 1])
                step = 2
            else:
                sum_g, sum_gx, sum_g2 = _row_grad_sums(dy[r], x[r], mean[r], q, gamma,
                                                       r % groups, channels, inner,
                                                       dgamma[partial], dbeta[partial],
                                                       single and inner > 1)
                step = 1
            _any_row_dx(dy[r], x[r], mean[r], q, var[r], gamma, gamma_range, r % groups,
                        channels, inner, sum_g, sum_gx, sum_g2, count, single, dx[r])
            r += step
    # the partials added in order (as numpy's sum over axis 0 would): (G, C) each
    parts = dgamma.shape[0]
    return (_in_order(dgamma.reshape((parts, groups * channels))).reshape((groups, channels)),
            _in_order(dbeta.reshape((parts, groups * channels))).reshape((groups, channels)))


class _ThreadCount(threading.local):
    current = 0  # numba's thread count is per calling thread: what this one last set


_thread_count = _ThreadCount()


class _Cores(threading.local):
    count = 0  # the cores last read, and when (time.monotonic)
    read_at = -math.inf


_cores = _Cores()
CORES_TTL = 1.0  # seconds a reading of the affinity mask is used (a system call per pass)


def _available_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's CPU set),
    read again at most every `CORES_TTL` seconds: a mask changed at run time (taskset) is
    followed within that, and a small pass does not pay a system call each time."""
    now = time.monotonic()
    if now - _cores.read_at >= CORES_TTL:
        try:
            _cores.count = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # no affinity masks on this system
            _cores.count = os.cpu_count() or 1
        _cores.read_at = now
    return _cores.count


def _usable(threads: int) -> int:
    # Never more threads than cores: a parallel pass waits for its slowest thread, and a
    # thread that shares a core waits for a time slice.
    return max(1, min(threads, numba.config.NUMBA_NUM_THREADS, _available_cores()))


def run(kernel: Any, threads: int, *args: Any) -> Any:
    """Call one compiled pass with `threads` threads, one caller at a time."""
    threads = _usable(threads)
    with _lock:
        if _thread_count.current != threads:
            numba.set_num_threads(threads)
            _thread_count.current = threads
        return kernel(*args)


def _col(kernel2: Any, kernel3: Any, layout: Layout) -> Any:
    return kernel2 if layout.B == 1 else kernel3


def _elementwise_runs(layout: Layout, dtype: np.dtype, threads: int) -> tuple[int, int]:
    """How an elementwise column pass goes through the rows (any choice gives the same
    values): one run of rows per thread, as the sums pass's chunks are shared out (in
    order, in equal runs), so that a thread's run ends on the rows it read last there; and
    the rows of a block of about `REVERSED_BLOCK_BYTES`, the blocks taken last first."""
    row_bytes = layout.K * layout.B * dtype.itemsize
    return max(1, min(layout.A, _usable(threads))), max(1, REVERSED_BLOCK_BYTES // row_bytes)


def _row_step(layout: Layout, dtype: np.dtype) -> int:
    """Rows between the four rows the (A, K) sums passes take side by side: a page apart
    (one row when a row fills a page), at most 16 (a group of 64 rows)."""
    return max(1, min(16, PAGE_BYTES // (layout.K * dtype.itemsize)))


def _column_total(parts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The sum over axis 0 of (chunks, K) partial sums (K,), and what its rounding left out
    (None where not taken). Up to CHUNKS partials (every shape with more than a few features,
    whose sums over the batch axis the textbook takes as running sums over every row) numpy's
    sum over axis 0 costs one call. More partials (a few features over many rows, which the
    textbook sums pairwise) are added carried (`_carried_sums`): only each chunk's short
    running sum rounds."""
    if parts.shape[0] <= CHUNKS:
        return parts.sum(axis=0), None
    return _carried_sums(parts)




def _short(shift: np.ndarray) -> np.ndarray:
    """shift rounded to `SHIFT_BITS` significant bits. x - shift then drops none of the
    shift's bits wherever |x| is above it (up to 2^26 times it): a shift of 53 bits loses the
    same low bits from every such x, a bias that adds up over a long column (a mean of 1e-3
    over a million values was 25 of its ulps off, and dgamma, with sum(dy) ~ 1e6, moved by
    a million times that)."""
    fraction, exponent = np.frexp(shift)
    return np.ldexp(np.round(fraction * 2.0 ** SHIFT_BITS), exponent - SHIFT_BITS)


def _column_sums(kernel2: Any, kernel3: Any, layout: Layout, dtype: np.dtype, threads: int,
                 *args: Any) -> Any:
    if layout.B == 1:
        return run(kernel2, threads, *args, _row_step(layout, dtype))
    return run(kernel3, threads, *args)


def column_statistics(x: np.ndarray, layout: Layout, threads: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and biased variance (K,): one pass, two when far off."""
    xv = x.reshape(layout.view)
    if layout.B == 1:
        mean, var, again = run(col_moments2, threads, xv, _row_step(layout, x.dtype),
                               FAR_SHIFT[x.dtype])
        if not again:
            return mean, var

    def about(shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        s1, s2 = _column_sums(col_sums2, col_sums3, layout, x.dtype, threads, xv, shift)
        total, left_out = _column_total(s1)
        return combine_moments(total, _column_total(s2)[0], shift, layout.count, x.dtype,
                               left_out)

    mean, var, again = about(_short(lead_shift(xv, layout)))
    if again:  # the shift was far from the mean: once more about the mean's leading bits
        mean, var, again = about(_short(mean))
    if again:  # those bits are themselves far from it (a constant 0.1, whose spread is 0: this
        mean, var, _ = about(mean)  # looped forever), so a last pass about the mean itself
    return mean, var


def column_normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                     var: np.ndarray, eps: float, layout: Layout, threads: int) -> np.ndarray:
    """out = (x - mean) * gamma * ivar + beta, per feature k, stored in x's dtype."""
    out = np.empty(x.shape, x.dtype)
    scale = gamma * (1.0 / np.sqrt(var + eps))
    run(_col(col_normalize2, col_normalize3, layout), threads, x.reshape(layout.view), mean,
        scale, beta, out.reshape(layout.view), *_elementwise_runs(layout, x.dtype, threads))
    return out


def by_channel(layout: Layout, dtype: np.dtype) -> bool:
    """Whether spatial batch norm takes the channel passes: a channel fits `CHANNEL_BYTES`
    and its segments are long enough to vectorize (else the column passes, row order)."""
    return layout.B >= CHANNEL_MIN_INNER and layout.count * dtype.itemsize <= CHANNEL_BYTES


def column_forward_with_statistics(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                                   eps: float, layout: Layout, threads: int
                                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """out (x's shape and dtype) and the float64 mean and biased variance (K,) of a
    training-mode forward: per channel while it is in cache where `by_channel`, else the
    statistics pass, then the normalize pass."""
    if not by_channel(layout, x.dtype):
        mean, var = column_statistics(x, layout, threads)
        return column_normalize(x, gamma, beta, mean, var, eps, layout, threads), mean, var
    out = np.empty(x.shape, x.dtype)
    mean, var = np.empty(layout.K), np.empty(layout.K)
    run(channel_forward, threads, x.reshape(layout.view), gamma, beta, eps,
        out.reshape(layout.view), mean, var)
    return out, mean, var


def _column_dx_float32(dyv: np.ndarray, xv: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
                       var: np.ndarray, ivar: np.ndarray, dbeta: np.ndarray, dgamma: np.ndarray,
                       sum_dy2: np.ndarray, layout: Layout, threads: int) -> np.ndarray | None:
    """The float32 dx of (A, K) float32 worked in float32, or None where its bound does not
    hold: judged with max |xhat| <= sqrt(count) first, then with each feature's range."""
    plan = _float32_dx_factors(dbeta, dgamma, sum_dy2, gamma, mean, var, ivar, layout.count,
                               mean, mean, False)
    if not plan[0]:
        low, high = run(col_range2, threads, xv)
        plan = _float32_dx_factors(dbeta, dgamma, sum_dy2, gamma, mean, var, ivar,
                                   layout.count, low, high, True)
        if not plan[0]:
            return None
    dx = np.empty(xv.shape, np.float32)
    run(col_dx2_float32, threads, dyv, xv, *plan[2:], plan[1], dx,
        *_elementwise_runs(layout, xv.dtype, threads))
    return dx


def column_backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, eps: float, layout: Layout, threads: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx = gamma * ivar * (dy - mean(dy) - xhat * mean(dy * xhat)); dgamma, dbeta (K,)."""
    xv = x.reshape(layout.view)
    dyv = np.ascontiguousarray(upstream.reshape(layout.view))
    ivar = 1.0 / np.sqrt(var + eps)
    if by_channel(layout, x.dtype):
        dx = np.empty(x.shape, x.dtype)
        dgamma, dbeta = np.empty(layout.K), np.empty(layout.K)
        run(channel_backward, threads, dyv, xv, gamma, mean, ivar, dx.reshape(layout.view),
            dgamma, dbeta)
        return dx, dgamma, dbeta
    if layout.B == 1 and _chunks(layout.A, layout.K, x.size) <= CHUNKS:
        single = x.dtype == np.float32
        dbeta, dgamma, sum_dy2 = run(col_grad_totals2, threads, dyv, xv, mean, ivar,
                                     _row_step(layout, x.dtype), single)
        if single:
            dx = _column_dx_float32(dyv, xv, gamma, mean, var, ivar, dbeta, dgamma, sum_dy2,
                                    layout, threads)
            if dx is not None:
                return dx.reshape(x.shape), dgamma, dbeta
    else:
        s_dy, s_dy_xhat = _column_sums(col_grad_sums2, col_grad_sums3, layout, x.dtype,
                                       threads, dyv, xv, mean, ivar)
        dbeta, dgamma = _column_total(s_dy)[0], _column_total(s_dy_xhat)[0]
    dx = np.empty(x.shape, x.dtype)
    run(_col(col_dx2, col_dx3, layout), threads, dyv, xv, mean, ivar, gamma,
        gamma * (dbeta / layout.count), gamma * (dgamma / layout.count), dx.reshape(layout.view),
        *_elementwise_runs(layout, x.dtype, threads))
    return dx, dgamma, dbeta


def _row_shape(rows: RowLayout) -> tuple[int, int, int]:
    return rows.G, rows.C, rows.S


def row_statistics_of(x: np.ndarray, rows: RowLayout, threads: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-row float64 mean and biased variance (N * G,)."""
    return run(row_statistics, threads, x.reshape(rows.flat), *_row_shape(rows),
               FAR_SHIFT[x.dtype])


def row_forward_of(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                   rows: RowLayout, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """out (x's shape and dtype) and the per-row float64 mean and variance (N * G,) in one
    pass over memory: what `row_statistics_of`, then `row_normalize_of` give."""
    out = np.empty(x.shape, x.dtype)
    mean, var = run(row_forward, threads, x.reshape(rows.flat), *_row_shape(rows), gamma, beta,
                    eps, FAR_SHIFT[x.dtype], out.reshape(rows.flat))
    return out, mean, var


def row_normalize_of(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                     var: np.ndarray, eps: float, rows: RowLayout, threads: int) -> np.ndarray:
    """out = (x - mean) * ivar * gamma + beta per row, gamma/beta per (g, c)."""
    out = np.empty(x.shape, x.dtype)
    run(row_normalize, threads, x.reshape(rows.flat), *_row_shape(rows), mean, var, eps, gamma,
        beta, out.reshape(rows.flat))
    return out


def row_backward_of(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, eps: float, rows: RowLayout, threads: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx per row by the closed form; dgamma, dbeta (G, C) float64. One pass over memory."""
    dyv = np.ascontiguousarray(upstream.reshape(rows.flat))
    dx = np.empty(x.shape, x.dtype)
    dgamma, dbeta = run(row_backward, threads, dyv, x.reshape(rows.flat), *_row_shape(rows),
                        mean, var, eps, gamma, dx.reshape(rows.flat), x.dtype == np.float32)
    return dx, dgamma, dbeta

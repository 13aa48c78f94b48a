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
- **rows** (layer and group norm): x viewed as (N, G, C, S), one statistic per row (n, g)
  over its C * S values, gamma and beta per (g, c). A row is in cache once read, so each
  pass reads memory once: the statistics (one pass over the row about a shift sampled from
  it), the training-mode forward (the row's statistics, then its output) and the backward
  (the row's sums, then its dx). The forward and backward are pipelined: the loop that
  works row r from cache takes the sums of row r + 1 as it streams in.

Exactness, on every input the textbook core handles: every value is worked in float64
(float32 data is converted as it is read, results are rounded once when stored), and no
formula cancels. The statistics are taken about a shift close to the mean (the mean of a
few leading rows for columns, of a few of the row's own values for rows, the channel's
own first-pass mean for channels) and corrected by the mean of the shifted values, so a
mean far from zero costs no digits; when the shift turns out far from the mean
(adversarial data), a second pass about the mean itself follows. The
backward multiplies by xhat = (x - mean) * ivar, never by ivar^2 * sum(dy * (x -
mean)), so a variance that overflows (|x| ~ 1e200 in float64) gives the textbook's
finite answer, not inf * 0. Sums are partial sums over a fixed number of chunks, added in
order, or a channel's own sums taken by one thread: the result does not depend on the thread
count.

Safety: numba's parallel loops run on one threading layer per process. Not every layer can
be entered from two Python threads at once (workqueue aborts), so calls are serialized;
GNU OpenMP cannot run in a child forked after it ran in the parent, which `fork_safe` tells.
Compiled code is cached on disk in a private folder (`compile_cache.py`), and without one,
the passes are compiled in memory; any failure of the cache is a miss, never an error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import prange

from .compile_cache import cached_njit
from .kernels import FAR_SHIFT, Layout, RowLayout, combine_moments, lead_shift

__all__ = ["fork_safe", "column_statistics", "column_normalize", "column_backward",
           "column_forward_with_statistics", "by_channel",
           "row_statistics_of", "row_normalize_of", "row_forward_of", "row_backward_of", "CHUNKS"]

CHUNKS = 64  # partial sums per statistic: enough to keep every thread busy, fixed for determinism
CHUNK_ELEMENTS = 1 << 13  # at least this many elements per chunk: small inputs take few chunks
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
# measured slower than one row at a time. A chunk's sums are added in an order fixed by
# the shape: the same bits on any thread count. The second pass of each direction
# (normalize, dx) takes each thread's rows in blocks of `REVERSED_BLOCK_BYTES`, last block
# first, rows in order inside a block: it starts on the rows the first pass left in the
# shared cache and still streams forward (rows taken one by one last first measured
# slower than in order).
PAGE_BYTES = 4096
REVERSED_BLOCK_BYTES = 1 << 18


@_compile(fastmath=_FASTMATH)
def col_sums2(x, shift, step):  # pragma: no cover - compiled
    rows, features = x.shape
    chunks = max(1, min(rows, CHUNKS, x.size // CHUNK_ELEMENTS))
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        lo, hi = c * rows // chunks, (c + 1) * rows // chunks
        t1, t2 = s1[c], s2[c]
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
    return s1, s2


@_compile(fastmath=_FASTMATH)
def col_sums3(x, shift):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    chunks = max(1, min(rows, CHUNKS, x.size // CHUNK_ELEMENTS))
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        for a in range(c * rows // chunks, (c + 1) * rows // chunks):
            for k in range(features):
                m = shift[k]
                t1 = 0.0
                t2 = 0.0
                for b in range(inner):
                    d = np.float64(x[a, k, b]) - m
                    t1 += d
                    t2 += d * d
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
                    for b in range(inner):
                        out[a, k, b] = (np.float64(x[a, k, b]) - m) * s + o


@_compile(fastmath=_FASTMATH)
def col_grad_sums2(dy, x, mean, ivar, step):  # pragma: no cover - compiled
    rows, features = x.shape
    chunks = max(1, min(rows, CHUNKS, x.size // CHUNK_ELEMENTS))
    s_dy = np.zeros((chunks, features))
    s_dy_xhat = np.zeros((chunks, features))
    for c in prange(chunks):
        lo, hi = c * rows // chunks, (c + 1) * rows // chunks
        t1, t2 = s_dy[c], s_dy_xhat[c]
        a = lo
        while a + 4 * step <= hi:  # four rows a page apart, as in `col_sums2`
            for i in range(a, a + step):
                for k in range(features):
                    m, r = mean[k], ivar[k]
                    g0 = np.float64(dy[i, k])
                    g1 = np.float64(dy[i + step, k])
                    g2 = np.float64(dy[i + 2 * step, k])
                    g3 = np.float64(dy[i + 3 * step, k])
                    t1[k] += (g0 + g1) + (g2 + g3)
                    t2[k] += ((g0 * ((np.float64(x[i, k]) - m) * r)
                               + g1 * ((np.float64(x[i + step, k]) - m) * r))
                              + (g2 * ((np.float64(x[i + 2 * step, k]) - m) * r)
                                 + g3 * ((np.float64(x[i + 3 * step, k]) - m) * r)))
            a += 4 * step
        for i in range(a, hi):
            for k in range(features):
                g = np.float64(dy[i, k])
                t1[k] += g
                t2[k] += g * ((np.float64(x[i, k]) - mean[k]) * ivar[k])
    return s_dy, s_dy_xhat


@_compile(fastmath=_FASTMATH)
def col_grad_sums3(dy, x, mean, ivar):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    chunks = max(1, min(rows, CHUNKS, x.size // CHUNK_ELEMENTS))
    s_dy = np.zeros((chunks, features))
    s_dy_xhat = np.zeros((chunks, features))
    for c in prange(chunks):
        for a in range(c * rows // chunks, (c + 1) * rows // chunks):
            for k in range(features):
                m, r = mean[k], ivar[k]
                t1 = 0.0
                t2 = 0.0
                for b in range(inner):
                    g = np.float64(dy[a, k, b])
                    t1 += g
                    t2 += g * ((np.float64(x[a, k, b]) - m) * r)
                s_dy[c, k] += t1
                s_dy_xhat[c, k] += t2
    return s_dy, s_dy_xhat


@_compile(fastmath=_FASTMATH)
def col_dx2(dy, x, mean, ivar, scale, mean_dy, mean_dy_xhat, dx, parts, block
            ):  # pragma: no cover - compiled
    rows, features = x.shape
    for p in prange(parts):
        lo, hi = p * rows // parts, (p + 1) * rows // parts
        for top in range(hi, lo, -block):  # last block first, see above
            for a in range(max(lo, top - block), top):
                for k in range(features):
                    xhat = (np.float64(x[a, k]) - mean[k]) * ivar[k]
                    dx[a, k] = scale[k] * (np.float64(dy[a, k]) - mean_dy[k]
                                           - xhat * mean_dy_xhat[k])


@_compile(fastmath=_FASTMATH)
def col_dx3(dy, x, mean, ivar, scale, mean_dy, mean_dy_xhat, dx, parts, block
            ):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    for p in prange(parts):
        lo, hi = p * rows // parts, (p + 1) * rows // parts
        for top in range(hi, lo, -block):
            for a in range(max(lo, top - block), top):
                for k in range(features):
                    m, r, s, md, mdx = mean[k], ivar[k], scale[k], mean_dy[k], mean_dy_xhat[k]
                    for b in range(inner):
                        xhat = (np.float64(x[a, k, b]) - m) * r
                        dx[a, k, b] = s * (np.float64(dy[a, k, b]) - md - xhat * mdx)


# Spatial batch norm channel by channel: a channel k is A segments of B contiguous values,
# small enough (`CHANNEL_BYTES`) to stay in cache between the passes over it, so memory is
# read once forward (x) and once backward (dy and x), however many passes the math takes.
# Batch norm's (A, K) columns get no such pass: a few columns of every row are one cache
# line per row, and reading memory that way measured several times slower than a stream.
@_compile(fastmath=_FASTMATH)
def channel_forward(x, gamma, beta, eps, out, mean, var):  # pragma: no cover - compiled
    rows, channels, inner = x.shape
    count = rows * inner
    for k in prange(channels):
        total = 0.0
        for a in range(rows):  # the mean (from memory) ...
            t = 0.0
            for b in range(inner):
                t += np.float64(x[a, k, b])
            total += t
        shift = total / count
        s1 = 0.0
        s2 = 0.0
        for a in range(rows):  # ... then the centred sums, from cache: no cancellation
            t1 = 0.0
            t2 = 0.0
            for b in range(inner):
                d = np.float64(x[a, k, b]) - shift
                t1 += d
                t2 += d * d
            s1 += t1
            s2 += t2
        m1 = s1 / count
        e2 = s2 / count
        v = max(e2 - m1 * m1, 0.0) if e2 < np.inf else e2  # overflowed: the textbook's inf
        m = shift + m1
        mean[k] = m
        var[k] = v
        scale = gamma[k] / np.sqrt(v + eps)
        offset = beta[k]
        for a in range(rows):  # normalized from cache
            for b in range(inner):
                out[a, k, b] = (np.float64(x[a, k, b]) - m) * scale + offset


@_compile(fastmath=_FASTMATH)
def channel_backward(dy, x, gamma, mean, ivar, dx, dgamma, dbeta):  # pragma: no cover
    rows, channels, inner = x.shape
    count = rows * inner
    for k in prange(channels):
        m, r = mean[k], ivar[k]
        s_dy = 0.0
        s_dy_xhat = 0.0
        for a in range(rows):  # both sums (from memory) ...
            t1 = 0.0
            t2 = 0.0
            for b in range(inner):
                g = np.float64(dy[a, k, b])
                t1 += g
                t2 += g * ((np.float64(x[a, k, b]) - m) * r)
            s_dy += t1
            s_dy_xhat += t2
        dbeta[k] = s_dy
        dgamma[k] = s_dy_xhat
        md, mdx, s = s_dy / count, s_dy_xhat / count, gamma[k] * r
        for a in range(rows):  # ... then dx, from cache
            for b in range(inner):
                xhat = (np.float64(x[a, k, b]) - m) * r
                dx[a, k, b] = s * (np.float64(dy[a, k, b]) - md - xhat * mdx)

# --- rows: x as (N, G, C, S), statistics per row (n, g) ------------------------------
# A pass over rows goes through them in a fixed number of runs of consecutive rows (one
# thread each) and, inside a run, is pipelined: the loop that works row r in cache (its
# output, its dx) also takes the sums of row r + 1, so the next row streams in from memory
# while this one is computed instead of after it.
SHIFT_SAMPLES = 32  # about this many values of a row give its shift
ROW_RUNS = 16  # runs of rows per pass: enough for the threads; a run's first row is not pipelined
ROW_RUN_ELEMENTS = 1 << 15  # at least this many elements per run: small inputs take few
# dgamma and dbeta sum over rows: a partial sum per (about) this many rows of a run, added by
# the caller, so that no running sum is long (a run may hold thousands of rows), within a
# budget of partial values.
ROWS_PER_PARTIAL = 64
PARTIAL_VALUES = 1 << 18


@cached_njit(fastmath=_FASTMATH)
def _row_shift(x, i, g):  # pragma: no cover - compiled
    """The mean of a few of row (i, g)'s values, close to the row's mean on real data: its
    first SHIFT_SAMPLES values for layer norm; for group norm the first values of up to
    SHIFT_SAMPLES of its channels, so that channels of different means all count. Taken
    where a pass over the row starts reading anyway (a row's first cache lines, a
    channel's first): values spread evenly over a row would each be a wait on memory."""
    channels, inner = x.shape[2], x.shape[3]
    total = 0.0
    if inner == 1:
        samples = min(channels, SHIFT_SAMPLES)
        for c in range(samples):
            total += np.float64(x[i, g, c, 0])
        return total / samples
    step = max(1, channels // SHIFT_SAMPLES)
    per = min(inner, max(1, SHIFT_SAMPLES // channels))
    for c in range(0, step * min(channels, SHIFT_SAMPLES), step):
        for s in range(per):
            total += np.float64(x[i, g, c, s])
    return total / (min(channels, SHIFT_SAMPLES) * per)


SUM_BLOCK = 256  # a channel longer than this sums its dy and dy * xhat in blocks
# Layer norm's blocks go by number (lo = block * SUM_BLOCK) and a block's loop indexes
# lo + j for j in range(count): with `for lo in range(0, n, SUM_BLOCK)` or `for c in
# range(lo, hi)` numba cannot tell an index is >= 0 and checks each one for wraparound, which
# keeps the loop out of SIMD lanes (measured: 4-5x slower).


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


@cached_njit(fastmath=_FASTMATH)
def _shifted_sums(flat, r, shift):  # pragma: no cover - compiled
    """The sums of d = x - shift and d^2 over row r, in blocks, carried (`_carry_add`)."""
    count = flat.shape[1]
    s1 = k1 = s2 = k2 = 0.0
    for lo in range(0, count, SUM_BLOCK):
        b1 = 0.0
        b2 = 0.0
        for j in range(lo, min(lo + SUM_BLOCK, count)):
            d = np.float64(flat[r, j]) - shift
            b1 += d
            b2 += d * d
        s1, k1 = _carry_add(s1, k1, b1)
        s2, k2 = _carry_add(s2, k2, b2)
    return _carried(s1, k1), _carried(s2, k2)


@cached_njit(fastmath=_FASTMATH)
def _moments_from(flat, r, shift, s1, s2, far):  # pragma: no cover - compiled
    """Row r's float64 mean and biased variance from the sums of d = x - shift and d^2.
    When the shift is not close to the mean (mean(d)^2 > far * var: the digits the shifted
    formula would lose matter, see kernels.FAR_SHIFT) or a sum overflowed (|x| near the
    float64 limit: a far shift times the count may overflow where the mean does not), the
    sums are taken again, from cache, about the row's mean: its sum over the count."""
    count = flat.shape[1]
    m1 = s1 / count
    if not (s2 < np.inf and m1 * m1 <= far * max(s2 / count - m1 * m1, 0.0)):
        shift = _shifted_sums(flat, r, 0.0)[0] / count
        s1, s2 = _shifted_sums(flat, r, shift)
        m1 = s1 / count
    return shift + m1, (max(s2 / count - m1 * m1, 0.0) if s2 < np.inf else s2)


@cached_njit(fastmath=_FASTMATH)
def _row_moments(flat, x, r, far):  # pragma: no cover - compiled
    """Row r's mean and variance in one pass about `_row_shift` (flat and x: the same
    memory as (N * G, C * S) and (N, G, C, S))."""
    groups = x.shape[1]
    shift = _row_shift(x, r // groups, r % groups)
    s1, s2 = _shifted_sums(flat, r, shift)
    return _moments_from(flat, r, shift, s1, s2, far)


@cached_njit(fastmath=_FASTMATH, inline="always")  # in the caller's loop
def _normalize_channel(x, i, g, c, m, s_c, o_c, out, i2, g2, shift, lo, hi
                       ):  # pragma: no cover - compiled
    """out over values lo..hi of channel c of row (i, g), and in the same loop the sums of
    d = x[i2, g2, c] - shift and d^2 there (the next row's statistics)."""
    s1 = 0.0
    s2 = 0.0
    for s in range(lo, hi):
        out[i, g, c, s] = (np.float64(x[i, g, c, s]) - m) * s_c + o_c
        d = np.float64(x[i2, g2, c, s]) - shift
        s1 += d
        s2 += d * d
    return s1, s2


@cached_njit(fastmath=_FASTMATH)
def _normalize_row(x, i, g, m, q, gamma, beta, out, i2, g2, shift):  # pragma: no cover
    """out[i, g] = (x[i, g] - m) * (q * gamma[g]) + beta[g], gamma per value (layer norm,
    S = 1) or per channel (group norm); with i2 >= 0, also the sums of d = x[i2, g2] -
    shift and d^2 (the next row's statistics), returned."""
    channels, inner = x.shape[2], x.shape[3]
    s1 = 0.0
    s2 = 0.0
    k1 = 0.0
    k2 = 0.0
    if inner == 1:
        if i2 < 0:
            for c in range(channels):
                out[i, g, c, 0] = (np.float64(x[i, g, c, 0]) - m) * (q * gamma[g, c]) + beta[g, c]
            return s1, s2
        for block in range(-(-channels // SUM_BLOCK)):  # the next row's sums in blocks, carried
            lo = block * SUM_BLOCK  # by number: see SUM_BLOCK
            b1 = 0.0
            b2 = 0.0
            for j in range(min(SUM_BLOCK, channels - lo)):
                c = lo + j
                out[i, g, c, 0] = (np.float64(x[i, g, c, 0]) - m) * (q * gamma[g, c]) + beta[g, c]
                d = np.float64(x[i2, g2, c, 0]) - shift
                b1 += d
                b2 += d * d
            s1, k1 = _carry_add(s1, k1, b1)
            s2, k2 = _carry_add(s2, k2, b2)
        return _carried(s1, k1), _carried(s2, k2)
    # The next row's sums in blocks (parts of a long channel, or short channels together,
    # up to 2 * SUM_BLOCK values), each carried into the row's (`_shifted_sums`).
    b1 = 0.0
    b2 = 0.0
    pending = 0
    for c in range(channels):
        s_c, o_c = q * gamma[g, c], beta[g, c]
        if i2 < 0:
            for s in range(inner):
                out[i, g, c, s] = (np.float64(x[i, g, c, s]) - m) * s_c + o_c
            continue
        if inner <= SUM_BLOCK:  # a short channel: one block with its neighbours
            t1, t2 = _normalize_channel(x, i, g, c, m, s_c, o_c, out, i2, g2, shift, 0, inner)
            b1, b2, pending = b1 + t1, b2 + t2, pending + inner
        else:
            for lo in range(0, inner, SUM_BLOCK):
                t1, t2 = _normalize_channel(x, i, g, c, m, s_c, o_c, out, i2, g2, shift, lo,
                                            min(lo + SUM_BLOCK, inner))
                s1, k1 = _carry_add(s1, k1, t1)
                s2, k2 = _carry_add(s2, k2, t2)
        if pending >= SUM_BLOCK:
            s1, k1 = _carry_add(s1, k1, b1)
            s2, k2 = _carry_add(s2, k2, b2)
            b1, b2, pending = 0.0, 0.0, 0
    s1, k1 = _carry_add(s1, k1, b1)
    s2, k2 = _carry_add(s2, k2, b2)
    return _carried(s1, k1), _carried(s2, k2)


@cached_njit()
def _runs(rows, size):  # pragma: no cover - compiled
    """How many runs of consecutive rows a pass takes: fixed by the shape alone, so that
    the partial sums (and the rows that start a pipeline) do not depend on the threads."""
    return max(1, min(rows, ROW_RUNS, size // ROW_RUN_ELEMENTS))


@_compile(fastmath=_FASTMATH)
def row_statistics(flat, x, far):  # pragma: no cover - compiled
    rows = flat.shape[0]  # flat and x: the same memory as (N * G, C * S) and (N, G, C, S)
    mean = np.empty(rows)
    var = np.empty(rows)
    for r in prange(rows):
        mean[r], var[r] = _row_moments(flat, x, r, far)
    return mean, var


@_compile(fastmath=_FASTMATH)
def row_normalize(x, mean, ivar, gamma, beta, out):  # pragma: no cover - compiled
    n, groups = x.shape[0], x.shape[1]
    for r in prange(n * groups):
        _normalize_row(x, r // groups, r % groups, mean[r], ivar[r], gamma, beta, out, -1, 0,
                       0.0)


@_compile(fastmath=_FASTMATH)
def row_forward(flat, x, gamma, beta, eps, far, out):  # pragma: no cover - compiled
    # Each row's statistics, then its output while it is in cache, the next row's sums taken
    # in the same loop: one read of x from memory in all.
    groups = x.shape[1]
    rows = flat.shape[0]
    runs = _runs(rows, x.size)
    mean = np.empty(rows)
    var = np.empty(rows)
    for run in prange(runs):
        start, stop = run * rows // runs, (run + 1) * rows // runs
        m, v = _row_moments(flat, x, start, far)
        for r in range(start, stop):
            mean[r], var[r] = m, v
            q = 1.0 / np.sqrt(v + eps)
            if r + 1 < stop:
                i2, g2 = (r + 1) // groups, (r + 1) % groups
                shift = _row_shift(x, i2, g2)
                s1, s2 = _normalize_row(x, r // groups, r % groups, m, q, gamma, beta, out, i2,
                                        g2, shift)
                m, v = _moments_from(flat, r + 1, shift, s1, s2, far)
            else:
                _normalize_row(x, r // groups, r % groups, m, q, gamma, beta, out, -1, 0, 0.0)
    return mean, var


# Eagerly, on its own options, as `_carry_add` (a lazy compile would take the first
# caller's fast-math flags).
@cached_njit("float64(float64, float64, float64, float64, float64)")
def _dx_value(q, gd, xhat, mean_g, mean_gx):  # pragma: no cover - compiled
    """ivar * (g - mean(g) - xhat * mean(g * xhat)) for one value. Compiled without
    fast-math on purpose: allowed reassociation, the compiler folds the row's two divisions
    by the count into the dx loop, one vector division per element, (sum_g + xhat * sum_gx)
    / count, and the backward becomes compute-bound; allowed contraction, g = gamma * dy is
    fused into g - mean(g), so that a row of one value (mean(g) = g rounded) gets the
    product's rounding error as its dx instead of the textbook's exact zero."""
    return q * (gd - mean_g - xhat * mean_gx)


@cached_njit(fastmath=_FASTMATH, inline="always")  # in the caller's loop
def _channel_sums(dy, x, i, g, c, m, q, lo, hi):  # pragma: no cover - compiled
    """sum(dy) and sum(dy * xhat) over values lo..hi of channel c of row (i, g)."""
    t_dy = 0.0
    t_dyx = 0.0
    for s in range(lo, hi):
        d = np.float64(dy[i, g, c, s])
        t_dy += d
        t_dyx += d * ((np.float64(x[i, g, c, s]) - m) * q)
    return t_dy, t_dyx


@cached_njit(fastmath=_FASTMATH, inline="always")  # in the caller's loop
def _dx_channel(dy, x, i, g, c, m, q, gam, mean_g, mean_gx, dx, i2, g2, m2, q2, lo, hi
                ):  # pragma: no cover - compiled
    """dx over values lo..hi of channel c of row (i, g), and in the same loop what
    `_channel_sums` gives for row (i2, g2)."""
    t_dy = 0.0
    t_dyx = 0.0
    for s in range(lo, hi):
        xhat = (np.float64(x[i, g, c, s]) - m) * q
        dx[i, g, c, s] = _dx_value(q, gam * np.float64(dy[i, g, c, s]), xhat, mean_g, mean_gx)
        d = np.float64(dy[i2, g2, c, s])
        t_dy += d
        t_dyx += d * ((np.float64(x[i2, g2, c, s]) - m2) * q2)
    return t_dy, t_dyx


@cached_njit(fastmath=_FASTMATH)
def _grad_sums(dy, x, i, g, m, q, gamma, dgamma, dbeta):  # pragma: no cover - compiled
    """sum(g) and sum(g * xhat) of row (i, g), g = gamma * dy; for group norm (S > 1) also
    each channel's sums of dy and dy * xhat added to dbeta, dgamma (G, C): layer norm's
    are per value, added by `_dx_row`."""
    channels, inner = x.shape[2], x.shape[3]
    sum_g = 0.0
    sum_gx = 0.0
    if inner == 1:  # in blocks, carried: a row of thousands of values keeps its digits
        k_g = k_gx = 0.0
        for block in range(-(-channels // SUM_BLOCK)):
            lo = block * SUM_BLOCK  # by number: see SUM_BLOCK
            b_g = 0.0
            b_gx = 0.0
            for j in range(min(SUM_BLOCK, channels - lo)):
                c = lo + j
                gd = gamma[g, c] * np.float64(dy[i, g, c, 0])
                b_g += gd
                b_gx += gd * ((np.float64(x[i, g, c, 0]) - m) * q)
            sum_g, k_g = _carry_add(sum_g, k_g, b_g)
            sum_gx, k_gx = _carry_add(sum_gx, k_gx, b_gx)
        return _carried(sum_g, k_g), _carried(sum_gx, k_gx)
    for c in range(channels):
        if inner <= SUM_BLOCK:
            t_dy, t_dyx = _channel_sums(dy, x, i, g, c, m, q, 0, inner)
        else:  # in blocks, carried: a sum over thousands of values keeps its digits
            t_dy = k_dy = t_dyx = k_dyx = 0.0
            for lo in range(0, inner, SUM_BLOCK):
                b_dy, b_dyx = _channel_sums(dy, x, i, g, c, m, q, lo, min(lo + SUM_BLOCK, inner))
                t_dy, k_dy = _carry_add(t_dy, k_dy, b_dy)
                t_dyx, k_dyx = _carry_add(t_dyx, k_dyx, b_dyx)
            t_dy, t_dyx = _carried(t_dy, k_dy), _carried(t_dyx, k_dyx)
        dbeta[g, c] += t_dy
        dgamma[g, c] += t_dyx
        sum_g += gamma[g, c] * t_dy
        sum_gx += gamma[g, c] * t_dyx
    return sum_g, sum_gx


@cached_njit(fastmath=_FASTMATH)
def _dx_row(dy, x, i, g, m, q, mean_g, mean_gx, gamma, dgamma, dbeta, dx, i2, g2, m2, q2, add
            ):  # pragma: no cover - compiled
    """dx of row (i, g) from its means of g and g * xhat. With i2 >= 0, in the same loop,
    what `_grad_sums` gives for row (i2, g2), returned. Layer norm (S = 1) adds dy and
    dy * xhat to dbeta, dgamma per value here: `add` = 1 this row's, 2 this row's and row
    (i2, g2)'s together (one update of dbeta and dgamma for two rows of one group), 0 none
    (added with the row before)."""
    channels, inner = x.shape[2], x.shape[3]
    sum_g = 0.0
    sum_gx = 0.0
    if inner == 1:
        if i2 < 0:
            for c in range(channels):
                d = np.float64(dy[i, g, c, 0])
                xhat = (np.float64(x[i, g, c, 0]) - m) * q
                if add:
                    dbeta[g, c] += d
                    dgamma[g, c] += d * xhat
                dx[i, g, c, 0] = _dx_value(q, gamma[g, c] * d, xhat, mean_g, mean_gx)
            return sum_g, sum_gx
        # The next row's sums in blocks, carried (as in `_grad_sums`).
        k_g = k_gx = 0.0
        for block in range(-(-channels // SUM_BLOCK)):
            lo = block * SUM_BLOCK  # by number: see SUM_BLOCK
            b_g = 0.0
            b_gx = 0.0
            if add == 1:
                for j in range(min(SUM_BLOCK, channels - lo)):
                    c = lo + j
                    d = np.float64(dy[i, g, c, 0])
                    xhat = (np.float64(x[i, g, c, 0]) - m) * q
                    dbeta[g, c] += d
                    dgamma[g, c] += d * xhat
                    dx[i, g, c, 0] = _dx_value(q, gamma[g, c] * d, xhat, mean_g, mean_gx)
                    gd2 = gamma[g2, c] * np.float64(dy[i2, g2, c, 0])
                    b_g += gd2
                    b_gx += gd2 * ((np.float64(x[i2, g2, c, 0]) - m2) * q2)
            elif add == 2:  # rows (i, g) and (i2, g2) of the same group: one update for both
                for j in range(min(SUM_BLOCK, channels - lo)):
                    c = lo + j
                    d = np.float64(dy[i, g, c, 0])
                    xhat = (np.float64(x[i, g, c, 0]) - m) * q
                    dx[i, g, c, 0] = _dx_value(q, gamma[g, c] * d, xhat, mean_g, mean_gx)
                    d2 = np.float64(dy[i2, g2, c, 0])
                    xhat2 = (np.float64(x[i2, g2, c, 0]) - m2) * q2
                    gd2 = gamma[g2, c] * d2
                    b_g += gd2
                    b_gx += gd2 * xhat2
                    dbeta[g, c] += d + d2
                    dgamma[g, c] += d * xhat + d2 * xhat2
            else:
                for j in range(min(SUM_BLOCK, channels - lo)):
                    c = lo + j
                    d = np.float64(dy[i, g, c, 0])
                    xhat = (np.float64(x[i, g, c, 0]) - m) * q
                    dx[i, g, c, 0] = _dx_value(q, gamma[g, c] * d, xhat, mean_g, mean_gx)
                    gd2 = gamma[g2, c] * np.float64(dy[i2, g2, c, 0])
                    b_g += gd2
                    b_gx += gd2 * ((np.float64(x[i2, g2, c, 0]) - m2) * q2)
            sum_g, k_g = _carry_add(sum_g, k_g, b_g)
            sum_gx, k_gx = _carry_add(sum_gx, k_gx, b_gx)
        return _carried(sum_g, k_g), _carried(sum_gx, k_gx)
    if i2 < 0:
        for c in range(channels):
            gam = gamma[g, c]
            for s in range(inner):
                xhat = (np.float64(x[i, g, c, s]) - m) * q
                dx[i, g, c, s] = _dx_value(q, gam * np.float64(dy[i, g, c, s]), xhat, mean_g,
                                           mean_gx)
        return sum_g, sum_gx
    for c in range(channels):
        gam = gamma[g, c]
        if inner <= SUM_BLOCK:
            t_dy, t_dyx = _dx_channel(dy, x, i, g, c, m, q, gam, mean_g, mean_gx, dx, i2, g2,
                                      m2, q2, 0, inner)
        else:  # in blocks, carried, as in `_grad_sums`
            t_dy = k_dy = t_dyx = k_dyx = 0.0
            for lo in range(0, inner, SUM_BLOCK):
                b_dy, b_dyx = _dx_channel(dy, x, i, g, c, m, q, gam, mean_g, mean_gx, dx, i2,
                                          g2, m2, q2, lo, min(lo + SUM_BLOCK, inner))
                t_dy, k_dy = _carry_add(t_dy, k_dy, b_dy)
                t_dyx, k_dyx = _carry_add(t_dyx, k_dyx, b_dyx)
            t_dy, t_dyx = _carried(t_dy, k_dy), _carried(t_dyx, k_dyx)
        dbeta[g2, c] += t_dy
        dgamma[g2, c] += t_dyx
        sum_g += gamma[g2, c] * t_dy
        sum_gx += gamma[g2, c] * t_dyx
    return sum_g, sum_gx


@_compile(fastmath=_FASTMATH)
def row_backward(dy, x, mean, ivar, gamma, dx):  # pragma: no cover - compiled
    # Per row its sums, then its dx while it is in cache, the next row's sums taken in the
    # same loop; dgamma and dbeta as partial sums per part of a run of rows (added in order
    # by the caller), layer norm's updated once per pair of rows.
    n, groups, channels, inner = x.shape
    rows = n * groups
    count = channels * inner
    runs = _runs(rows, x.size)
    # partials per run: fixed by the shape, so the sums do not depend on the thread count
    per_run = max(1, min(-(-rows // (runs * ROWS_PER_PARTIAL)),
                         PARTIAL_VALUES // (runs * groups * channels)))
    dgamma = np.zeros((runs * per_run, groups, channels))
    dbeta = np.zeros((runs * per_run, groups, channels))
    for run in prange(runs):
        start, stop = run * rows // runs, (run + 1) * rows // runs
        dgm, db = dgamma[run * per_run], dbeta[run * per_run]
        sum_g, sum_gx = _grad_sums(dy, x, start // groups, start % groups, mean[start],
                                   ivar[start], gamma, dgm, db)
        added = False  # whether row r's dbeta and dgamma went in with the row before
        for r in range(start, stop):
            partial = run * per_run + (r - start) * per_run // (stop - start)
            dgm, db = dgamma[partial], dbeta[partial]
            mean_g, mean_gx = sum_g / count, sum_gx / count
            i, g = r // groups, r % groups
            if r + 1 < stop:
                add = 0 if added else (2 if groups == 1 else 1)  # pairs in one group
                sum_g, sum_gx = _dx_row(dy, x, i, g, mean[r], ivar[r], mean_g, mean_gx, gamma,
                                        dgm, db, dx, (r + 1) // groups, (r + 1) % groups,
                                        mean[r + 1], ivar[r + 1], add)
                added = add == 2
            else:
                _dx_row(dy, x, i, g, mean[r], ivar[r], mean_g, mean_gx, gamma, dgm, db, dx,
                        -1, 0, 0.0, 1.0, 0 if added else 1)
    return dgamma, dbeta


class _ThreadCount(threading.local):
    current = 0  # numba's thread count is per calling thread: what this one last set


_thread_count = _ThreadCount()


def _usable(threads: int) -> int:
    return max(1, min(threads, numba.config.NUMBA_NUM_THREADS))


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


def _column_sums(kernel2: Any, kernel3: Any, layout: Layout, dtype: np.dtype, threads: int,
                 *args: Any) -> Any:
    if layout.B == 1:
        return run(kernel2, threads, *args, _row_step(layout, dtype))
    return run(kernel3, threads, *args)


def column_statistics(x: np.ndarray, layout: Layout, threads: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and biased variance (K,): one pass, two when far off."""
    xv = x.reshape(layout.view)
    shift = lead_shift(xv, layout)
    while True:
        s1, s2 = _column_sums(col_sums2, col_sums3, layout, x.dtype, threads, xv, shift)
        mean, var, again = combine_moments(s1.sum(axis=0), s2.sum(axis=0), shift, layout.count,
                                           x.dtype)
        if not again:
            return mean, var
        shift = mean  # the shift was far from the mean: once more about the mean itself


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
    s_dy, s_dy_xhat = _column_sums(col_grad_sums2, col_grad_sums3, layout, x.dtype, threads,
                                   dyv, xv, mean, ivar)
    dbeta, dgamma = s_dy.sum(axis=0), s_dy_xhat.sum(axis=0)
    dx = np.empty(x.shape, x.dtype)
    run(_col(col_dx2, col_dx3, layout), threads, dyv, xv, mean, ivar, gamma * ivar,
        dbeta / layout.count, dgamma / layout.count, dx.reshape(layout.view),
        *_elementwise_runs(layout, x.dtype, threads))
    return dx, dgamma, dbeta


def row_statistics_of(x: np.ndarray, rows: RowLayout, threads: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-row float64 mean and biased variance (N * G,)."""
    return run(row_statistics, threads, x.reshape(rows.flat), x.reshape(rows.view),
               FAR_SHIFT[x.dtype])


def row_forward_of(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                   rows: RowLayout, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """out (x's shape and dtype) and the per-row float64 mean and variance (N * G,) in one
    pass over memory: what `row_statistics_of`, then `row_normalize_of` give, within
    rounding (a pipelined row's sums are added in another order)."""
    out = np.empty(x.shape, x.dtype)
    mean, var = run(row_forward, threads, x.reshape(rows.flat), x.reshape(rows.view), gamma,
                    beta, eps, FAR_SHIFT[x.dtype], out.reshape(rows.view))
    return out, mean, var


def row_normalize_of(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                     var: np.ndarray, eps: float, rows: RowLayout, threads: int) -> np.ndarray:
    """out = (x - mean) * ivar * gamma + beta per row, gamma/beta per (g, c)."""
    out = np.empty(x.shape, x.dtype)
    ivar = 1.0 / np.sqrt(var + eps)
    run(row_normalize, threads, x.reshape(rows.view), mean, ivar, gamma, beta,
        out.reshape(rows.view))
    return out


def row_backward_of(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
                    var: np.ndarray, eps: float, rows: RowLayout, threads: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx per row by the closed form; dgamma, dbeta (G, C) float64. One pass over memory."""
    dyv = np.ascontiguousarray(upstream.reshape(rows.view))
    ivar = 1.0 / np.sqrt(var + eps)
    dx = np.empty(x.shape, x.dtype)
    dgamma, dbeta = run(row_backward, threads, dyv, x.reshape(rows.view), mean, ivar, gamma,
                        dx.reshape(rows.view))
    return dx, dgamma.sum(axis=0), dbeta.sum(axis=0)

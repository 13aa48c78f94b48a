"""Compiled passes for small fused normalizations (numba, one thread, one call per seam).

Up to `fast.norm.SMALL_MAX_ELEMENTS` the data fits in cache and a normalization's time is
its calls, not its memory traffic: the parallel passes of `numba_kernels.py` pay a thread
launch and a few numpy calls around each of them, and the numpy closed form of `lean.py`
some twenty calls. Here each seam is one compiled call on one thread: the training-mode forward takes
the statistics and normalizes in one, the backward takes both sums and dx in one.

Imported by `fast/norm.py` only once the compiled passes are in use (never by `import
tinygrad_bn`). Layouts as the parallel passes' (`kernels.Layout`, `kernels.RowLayout`):
columns (A, K) or (A, K, B) for batch and spatial batch norm, rows (N * G, C, S) for layer
and group norm.

Exactness: every value worked in float64 (float32 data converted as it is read, results
rounded once when stored). The statistics take the mean m, then the sums of d = x - m and of
d^2 (passes over data in cache): mean = m + mean(d), var = mean(d^2) - mean(d)^2, where the
correction is at rounding level (m is the mean within rounding), so nothing cancels and a
mean far from zero costs no digits. The backward multiplies by xhat = (x - mean) * ivar, so
a variance that overflows gives the textbook's finite answer. Sums are blocked (per
statistic, blocks of 64 rows; a row's, a channel's or a segment's values in chunks of 256)
and each block is added to its total with its rounding error carried (Neumaier), so a sum
of thousands of blocks loses no more than one block does; within a block they may be
reassociated (SIMD lanes), as the parallel passes' are; nothing assumes finite values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .compile_cache import cached_njit
from .numba_kernels import _carried, _carry_add, _dx_value

__all__ = ["forward", "statistics", "normalize", "backward"]

_FASTMATH = {"reassoc", "nsz"}  # SIMD sums; no fused multiply-adds (a - a stays 0); finite or not


def _compile(fn: Callable[..., Any]) -> Any:
    """njit (serial) with the private disk cache (`compile_cache`), else in memory."""
    return cached_njit(fastmath=_FASTMATH)(fn)


# --- blocked sums: per-statistic blocks of 64 rows (or a row's or channel's 256 values),
# each added to its total with the rounding error carried (`numba_kernels._carry_add`): a
# sum of thousands of blocks keeps its digits ---
BLOCK = 64  # rows per block
CHUNK = 256  # values per block along a row or a channel


@_compile
def _fold(part, total, carry):  # pragma: no cover - compiled
    # A block's sums (part) into the totals, carried; part cleared for the next block.
    for k in range(part.size):
        total[k], carry[k] = _carry_add(total[k], carry[k], part[k])
        part[k] = 0.0


@_compile
def _finish(part, total, carry):  # pragma: no cover - compiled
    _fold(part, total, carry)
    for k in range(total.size):
        total[k] = _carried(total[k], carry[k])


@_compile
def _segment_sums(x, a, k, m, square):  # pragma: no cover - compiled
    # sum over b of (x[a, k, b] - m), or of its square, in chunks, carried. Chunks go by
    # number and index lo + j (j >= 0 known): numba checks an index it cannot prove >= 0 for
    # wraparound, which keeps a loop out of SIMD lanes.
    inner = x.shape[2]
    total = 0.0
    carry = 0.0
    for chunk in range(-(-inner // CHUNK)):
        lo = chunk * CHUNK
        t = 0.0
        for j in range(min(CHUNK, inner - lo)):
            d = np.float64(x[a, k, lo + j]) - m
            t += d * d if square else d
        total, carry = _carry_add(total, carry, t)
    return _carried(total, carry)


@_compile
def _segment_grad_sums(dy, x, a, k, m, q):  # pragma: no cover - compiled
    # sum over b of dy and of dy * xhat at (a, k), in chunks, carried (as `_segment_sums`).
    inner = x.shape[2]
    t_dy = k_dy = t_dyx = k_dyx = 0.0
    for chunk in range(-(-inner // CHUNK)):
        lo = chunk * CHUNK
        b_dy = 0.0
        b_dyx = 0.0
        for j in range(min(CHUNK, inner - lo)):
            d = np.float64(dy[a, k, lo + j])
            b_dy += d
            b_dyx += d * ((np.float64(x[a, k, lo + j]) - m) * q)
        t_dy, k_dy = _carry_add(t_dy, k_dy, b_dy)
        t_dyx, k_dyx = _carry_add(t_dyx, k_dyx, b_dyx)
    return _carried(t_dy, k_dy), _carried(t_dyx, k_dyx)


@_compile
def _row_sum(x, r, shift):  # pragma: no cover - compiled
    # sum(x[r] - shift) over the row, as chunks of 256 values added in order.
    rows, channels, inner = x.shape
    n = channels * inner
    flat = x[r].reshape(n) if inner == 1 else x[r].ravel()
    total = carry = 0.0
    for chunk in range(-(-n // CHUNK)):  # see `_segment_sums`
        lo = chunk * CHUNK
        t = 0.0
        for j in range(min(CHUNK, n - lo)):
            t += np.float64(flat[lo + j]) - shift
        total, carry = _carry_add(total, carry, t)
    return _carried(total, carry)


@_compile
def _row_centred_sums(x, r, shift):  # pragma: no cover - compiled
    # The sums of d = x[r] - shift and of d^2 over the row, in one pass (chunks as `_row_sum`).
    rows, channels, inner = x.shape
    n = channels * inner
    flat = x[r].reshape(n) if inner == 1 else x[r].ravel()
    s1 = k1 = s2 = k2 = 0.0
    for chunk in range(-(-n // CHUNK)):  # see `_segment_sums`
        lo = chunk * CHUNK
        t1 = 0.0
        t2 = 0.0
        for j in range(min(CHUNK, n - lo)):
            d = np.float64(flat[lo + j]) - shift
            t1 += d
            t2 += d * d
        s1, k1 = _carry_add(s1, k1, t1)
        s2, k2 = _carry_add(s2, k2, t2)
    return _carried(s1, k1), _carried(s2, k2)


# --- columns: x as (A, K, B) (B = 1 for (N, D) batch norm), statistics per feature k ---------
@_compile
def _col_sums(x, shift, square):  # pragma: no cover - compiled
    # Per feature k: sum over a and b of (x - shift[k]), or of its square.
    rows, features, inner = x.shape
    part = np.zeros(features)
    carry = np.zeros(features)
    total = np.zeros(features)
    for a in range(rows):
        if inner == 1:  # (N, D): the loop over features is the vectorized one
            if square:
                for k in range(features):
                    d = np.float64(x[a, k, 0]) - shift[k]
                    part[k] += d * d
            else:
                for k in range(features):
                    part[k] += np.float64(x[a, k, 0]) - shift[k]
        else:  # a segment of B values: its own chunks, carried into the total
            for k in range(features):
                part[k] = _segment_sums(x, a, k, shift[k], square)
            _fold(part, total, carry)
        if a % BLOCK == BLOCK - 1:
            _fold(part, total, carry)
    _finish(part, total, carry)
    return total


@_compile
def _col_stats(x):  # pragma: no cover - compiled
    # The mean, then the mean and variance about it: mean = m + mean(d), var = mean(d^2) -
    # mean(d)^2 with d = x - m; m is within rounding of the mean, so nothing cancels.
    rows, features, inner = x.shape
    count = rows * inner
    zero = np.zeros(features)
    m = _col_sums(x, zero, False) / count
    s1 = _col_sums(x, m, False) / count
    s2 = _col_sums(x, m, True) / count
    mean = m + s1
    var = np.empty(features)
    for k in range(features):
        var[k] = max(s2[k] - s1[k] * s1[k], 0.0) if s2[k] < np.inf else s2[k]
    return mean, var


@_compile
def _col_normalize(x, gamma, beta, mean, var, eps, out):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    scale = np.empty(features)
    shift = np.empty(features)
    for k in range(features):
        scale[k] = np.float64(gamma[k]) * (1.0 / np.sqrt(var[k] + eps))
        shift[k] = np.float64(beta[k])
    for a in range(rows):
        if inner == 1:
            for k in range(features):
                out[a, k, 0] = (np.float64(x[a, k, 0]) - mean[k]) * scale[k] + shift[k]
            continue
        for k in range(features):
            m, s, o = mean[k], scale[k], shift[k]
            for b in range(inner):
                out[a, k, b] = (np.float64(x[a, k, b]) - m) * s + o


@_compile
def _col_forward(x, gamma, beta, eps, out):  # pragma: no cover - compiled
    mean, var = _col_stats(x)
    _col_normalize(x, gamma, beta, mean, var, eps, out)
    return mean, var


@_compile
def _col_backward(dy, x, gamma, mean, var, eps, dx):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    count = rows * inner
    ivar = np.empty(features)
    for k in range(features):
        ivar[k] = 1.0 / np.sqrt(var[k] + eps)
    part_dy, carry_dy, dbeta = np.zeros(features), np.zeros(features), np.zeros(features)
    part_dyx, carry_dyx, dgamma = np.zeros(features), np.zeros(features), np.zeros(features)
    for a in range(rows):
        if inner == 1:
            for k in range(features):
                d = np.float64(dy[a, k, 0])
                part_dy[k] += d
                part_dyx[k] += d * ((np.float64(x[a, k, 0]) - mean[k]) * ivar[k])
        else:  # a segment of B values: its own chunks, carried into the totals
            for k in range(features):
                part_dy[k], part_dyx[k] = _segment_grad_sums(dy, x, a, k, mean[k], ivar[k])
            _fold(part_dy, dbeta, carry_dy)
            _fold(part_dyx, dgamma, carry_dyx)
        if a % BLOCK == BLOCK - 1:
            _fold(part_dy, dbeta, carry_dy)
            _fold(part_dyx, dgamma, carry_dyx)
    _finish(part_dy, dbeta, carry_dy)
    _finish(part_dyx, dgamma, carry_dyx)
    overflowed = False
    for k in range(features):
        if not (abs(dbeta[k]) < np.inf and abs(dgamma[k]) < np.inf):
            overflowed = True
    scale = np.empty(features)
    mean_dy = np.empty(features)
    mean_dy_xhat = np.empty(features)
    for k in range(features):
        scale[k] = np.float64(gamma[k]) * ivar[k]
        mean_dy[k] = dbeta[k] / count
        mean_dy_xhat[k] = dgamma[k] / count
    for a in range(rows):
        if inner == 1:
            for k in range(features):
                xhat = (np.float64(x[a, k, 0]) - mean[k]) * ivar[k]
                dx[a, k, 0] = scale[k] * (np.float64(dy[a, k, 0]) - mean_dy[k]
                                          - xhat * mean_dy_xhat[k])
            continue
        for k in range(features):
            m, q, s = mean[k], ivar[k], scale[k]
            md, mdx = mean_dy[k], mean_dy_xhat[k]
            for b in range(inner):
                xhat = (np.float64(x[a, k, b]) - m) * q
                dx[a, k, b] = s * (np.float64(dy[a, k, b]) - md - xhat * mdx)
    return dgamma, dbeta, overflowed


# --- rows: x as (N * G, C, S), statistics per row; gamma and beta as (G, C) ------------------
@_compile
def _row_stats(x):  # pragma: no cover - compiled
    rows, channels, inner = x.shape
    count = channels * inner
    mean = np.empty(rows)
    var = np.empty(rows)
    for r in range(rows):
        m = _row_sum(x, r, 0.0) / count
        s1, s2 = _row_centred_sums(x, r, m)
        s1, s2 = s1 / count, s2 / count
        mean[r] = m + s1
        var[r] = max(s2 - s1 * s1, 0.0) if s2 < np.inf else s2
    return mean, var


@_compile
def _row_normalize(x, gamma, beta, mean, var, eps, out):  # pragma: no cover - compiled
    rows, channels, inner = x.shape
    groups = gamma.shape[0]
    for r in range(rows):
        g = r % groups
        m, q = mean[r], 1.0 / np.sqrt(var[r] + eps)
        if inner == 1:
            for c in range(channels):
                out[r, c, 0] = ((np.float64(x[r, c, 0]) - m) * (q * np.float64(gamma[g, c]))
                                + np.float64(beta[g, c]))
            continue
        for c in range(channels):
            s_c, o_c = q * np.float64(gamma[g, c]), np.float64(beta[g, c])
            for s in range(inner):
                out[r, c, s] = (np.float64(x[r, c, s]) - m) * s_c + o_c


@_compile
def _row_forward(x, gamma, beta, eps, out):  # pragma: no cover - compiled
    mean, var = _row_stats(x)
    _row_normalize(x, gamma, beta, mean, var, eps, out)
    return mean, var


@_compile
def _row_backward(dy, x, gamma, mean, var, eps, dx):  # pragma: no cover - compiled
    rows, channels, inner = x.shape
    groups = gamma.shape[0]
    count = channels * inner
    size = groups * channels
    part_dy, carry_dy, dbeta = np.zeros(size), np.zeros(size), np.zeros(size)
    part_dyx, carry_dyx, dgamma = np.zeros(size), np.zeros(size), np.zeros(size)
    overflowed = False
    for r in range(rows):
        g = r % groups
        m, q = mean[r], 1.0 / np.sqrt(var[r] + eps)
        # Views of this group's sums (indexed from 0 so that the loops vectorize).
        pdy = part_dy[g * channels:(g + 1) * channels]
        pdyx = part_dyx[g * channels:(g + 1) * channels]
        sum_g = 0.0
        sum_gx = 0.0
        if inner == 1:  # layer norm: gamma per value; the row's sums, then its dx
            k_g = k_gx = 0.0
            for chunk in range(-(-channels // CHUNK)):  # see `_segment_sums`
                lo = chunk * CHUNK
                t_g = 0.0
                t_gx = 0.0
                for j in range(min(CHUNK, channels - lo)):
                    gd = np.float64(gamma[g, lo + j]) * np.float64(dy[r, lo + j, 0])
                    t_g += gd
                    t_gx += gd * ((np.float64(x[r, lo + j, 0]) - m) * q)
                sum_g, k_g = _carry_add(sum_g, k_g, t_g)
                sum_gx, k_gx = _carry_add(sum_gx, k_gx, t_gx)
            sum_g, sum_gx = _carried(sum_g, k_g), _carried(sum_gx, k_gx)
            if not (abs(sum_g) < np.inf and abs(sum_gx) < np.inf):
                overflowed = True
            mean_g, mean_gx = sum_g / count, sum_gx / count
            for c in range(channels):
                d = np.float64(dy[r, c, 0])
                xhat = (np.float64(x[r, c, 0]) - m) * q
                pdy[c] += d
                pdyx[c] += d * xhat
                dx[r, c, 0] = _dx_value(q, np.float64(gamma[g, c]) * d, xhat, mean_g, mean_gx)
        else:  # a channel of S values: its own chunks; channels and rows carried
            k_g = k_gx = 0.0
            for c in range(channels):
                gam = np.float64(gamma[g, c])
                t_dy, t_dyx = _segment_grad_sums(dy, x, r, c, m, q)
                pdy[c] = t_dy
                pdyx[c] = t_dyx
                sum_g, k_g = _carry_add(sum_g, k_g, gam * t_dy)
                sum_gx, k_gx = _carry_add(sum_gx, k_gx, gam * t_dyx)
            sum_g, sum_gx = _carried(sum_g, k_g), _carried(sum_gx, k_gx)
            own = slice(g * channels, (g + 1) * channels)  # this group's totals only
            _fold(pdy, dbeta[own], carry_dy[own])
            _fold(pdyx, dgamma[own], carry_dyx[own])
            if not (abs(sum_g) < np.inf and abs(sum_gx) < np.inf):
                overflowed = True
            mean_g, mean_gx = sum_g / count, sum_gx / count
            for c in range(channels):
                gam = np.float64(gamma[g, c])
                for s in range(inner):
                    xhat = (np.float64(x[r, c, s]) - m) * q
                    dx[r, c, s] = _dx_value(q, gam * np.float64(dy[r, c, s]), xhat, mean_g, mean_gx)
        if r % BLOCK == BLOCK - 1:
            _fold(part_dy, dbeta, carry_dy)
            _fold(part_dyx, dgamma, carry_dyx)
    _finish(part_dy, dbeta, carry_dy)
    _finish(part_dyx, dgamma, carry_dyx)
    return dgamma.reshape((groups, channels)), dbeta.reshape((groups, channels)), overflowed


# --- the calls fast/norm.py makes: x C-contiguous, views given as shapes --------------------
# One caller at a time, as the parallel passes: not every numba runtime is re-entrant.
_lock = threading.Lock()


def forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
            view: tuple[int, int, int], rows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """out (x's shape and dtype), mean and var float64 flat, of a training-mode forward; as
    rows (N * G, C, S), gamma and beta (G, C), or as columns (A, K, B), gamma and beta (K,)."""
    out = np.empty(x.shape, x.dtype)
    with _lock:
        mean, var = (_row_forward if rows else _col_forward)(x.reshape(view), gamma, beta, eps,
                                                             out.reshape(view))
    return out, mean, var


def statistics(x: np.ndarray, view: tuple[int, int, int], rows: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """mean and var float64 flat, per row (N * G,) or per feature (K,), two passes."""
    with _lock:
        return (_row_stats if rows else _col_stats)(x.reshape(view))


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              var: np.ndarray, eps: float, view: tuple[int, int, int], rows: bool) -> np.ndarray:
    """out = (x - mean) * ivar * gamma + beta per row or per feature, in x's dtype; mean and
    var flat."""
    out = np.empty(x.shape, x.dtype)
    with _lock:
        (_row_normalize if rows else _col_normalize)(x.reshape(view), gamma, beta, mean, var,
                                                     eps, out.reshape(view))
    return out


def backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
             var: np.ndarray, eps: float, view: tuple[int, int, int], rows: bool
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (x's shape and dtype), dgamma and dbeta float64 ((G, C) or (K,)); upstream
    C-contiguous."""
    dx = np.empty(x.shape, x.dtype)
    passes = _row_backward if rows else _col_backward
    with _lock:
        dgamma, dbeta, overflowed = passes(upstream.reshape(view), x.reshape(view), gamma, mean,
                                           var, eps, dx.reshape(view))
    if overflowed and x.dtype == np.float64:
        return _rescaled_backward(passes, upstream, x, gamma, mean, var, eps, view)
    return dx, dgamma, dbeta


RESCALE = 2.0**64  # a power of two: scaling by it rounds nothing (away from the subnormals)


def _rescaled_backward(passes: Callable[..., Any], upstream: np.ndarray, x: np.ndarray,
                       gamma: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float,
                       view: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # A sum of the backward left float64's range (|dy| near 1e307: the textbook's pairwise
    # sums may not, added in another order) where the means it is divided into need not: the
    # backward is linear in dy, so it is taken of dy / 2^64 and its results scaled back (an
    # inf then is a result past the range itself).
    scaled = np.divide(upstream, RESCALE, dtype=np.float64)
    dx = np.empty(x.shape, np.float64)
    with _lock:
        dgamma, dbeta, _ = passes(scaled.reshape(view), x.reshape(view), gamma, mean, var, eps,
                                  dx.reshape(view))
    with np.errstate(over="ignore"):
        for result in (dx, dgamma, dbeta):
            result *= RESCALE
    return dx, dgamma, dbeta

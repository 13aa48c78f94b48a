"""Optional compiled passes for the blocked fused batch norm (numba, when installed).

`kernels.use_numba()` switches the fused op's large-input path from the numpy block passes
to these; the numpy passes stay the default and are what the test suite always runs. Each
pass here is one loop over x (and dy) that numba vectorizes and splits across threads, so
the forward reads x twice and writes out once, and the backward reads x and dy twice and
writes dx once: the memory traffic the numpy version needs ten separate passes for.

Arrays arrive as (A, K) when the layout has no trailing axes (batch norm of (N, D)), else as
(A, K, B); the statistics are over A (and B), per feature k. Sums are accumulated in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


def _chunks(count: int) -> int:
    # Enough chunks to keep every thread busy, few enough to keep the partial sums small.
    return max(1, min(count, 64))


@njit(parallel=True, cache=True)
def _stats2(x, shift, chunks):  # pragma: no cover - compiled
    rows, features = x.shape
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        for a in range(c * rows // chunks, (c + 1) * rows // chunks):
            for k in range(features):
                d = x[a, k] - shift[k]
                s1[c, k] += d
                s2[c, k] += d * d
    return s1.sum(axis=0), s2.sum(axis=0)


@njit(parallel=True, cache=True)
def _stats3(x, shift, chunks):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        for a in range(c * rows // chunks, (c + 1) * rows // chunks):
            for k in range(features):
                t1 = 0.0
                t2 = 0.0
                for b in range(inner):
                    d = x[a, k, b] - shift[k]
                    t1 += d
                    t2 += d * d
                s1[c, k] += t1
                s2[c, k] += t2
    return s1.sum(axis=0), s2.sum(axis=0)


@njit(parallel=True, cache=True)
def _normalize2(x, mean, scale, beta, out):  # pragma: no cover - compiled
    rows, features = x.shape
    for a in prange(rows):
        for k in range(features):
            out[a, k] = (x[a, k] - mean[k]) * scale[k] + beta[k]


@njit(parallel=True, cache=True)
def _normalize3(x, mean, scale, beta, out):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    for a in prange(rows):
        for k in range(features):
            m, s, o = mean[k], scale[k], beta[k]
            for b in range(inner):
                out[a, k, b] = (x[a, k, b] - m) * s + o


@njit(parallel=True, cache=True)
def _reduce2(dy, x, mean, chunks):  # pragma: no cover - compiled
    rows, features = x.shape
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        for a in range(c * rows // chunks, (c + 1) * rows // chunks):
            for k in range(features):
                g = dy[a, k]
                s1[c, k] += g
                s2[c, k] += g * (x[a, k] - mean[k])
    return s1.sum(axis=0), s2.sum(axis=0)


@njit(parallel=True, cache=True)
def _reduce3(dy, x, mean, chunks):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    s1 = np.zeros((chunks, features))
    s2 = np.zeros((chunks, features))
    for c in prange(chunks):
        for a in range(c * rows // chunks, (c + 1) * rows // chunks):
            for k in range(features):
                t1 = 0.0
                t2 = 0.0
                m = mean[k]
                for b in range(inner):
                    g = dy[a, k, b]
                    t1 += g
                    t2 += g * (x[a, k, b] - m)
                s1[c, k] += t1
                s2[c, k] += t2
    return s1.sum(axis=0), s2.sum(axis=0)


@njit(parallel=True, cache=True)
def _combine2(dy, x, mean, a_coef, k_coef, c_coef, dx):  # pragma: no cover - compiled
    rows, features = x.shape
    for a in prange(rows):
        for k in range(features):
            dx[a, k] = a_coef[k] * (dy[a, k] + k_coef[k] * (x[a, k] - mean[k]) + c_coef[k])


@njit(parallel=True, cache=True)
def _combine3(dy, x, mean, a_coef, k_coef, c_coef, dx):  # pragma: no cover - compiled
    rows, features, inner = x.shape
    for a in prange(rows):
        for k in range(features):
            m, ak, kk, ck = mean[k], a_coef[k], k_coef[k], c_coef[k]
            for b in range(inner):
                dx[a, k, b] = ak * (dy[a, k, b] + kk * (x[a, k, b] - m) + ck)


def statistics(xv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and (biased) variance of xv, (A, K) or (A, K, B)."""
    shift = (xv[0] if xv.ndim == 2 else xv[0].mean(axis=1)).astype(np.float64)
    stats = _stats2 if xv.ndim == 2 else _stats3
    s1, s2 = stats(xv, shift, _chunks(xv.shape[0]))
    count = xv.size // xv.shape[1]
    m1 = s1 / count
    return shift + m1, np.maximum(s2 / count - m1 * m1, 0.0)


def normalize(xv: np.ndarray, mean: np.ndarray, scale: np.ndarray, beta: np.ndarray,
              out: np.ndarray) -> None:
    """out = (x - mean) * scale + beta, per feature, in x's dtype."""
    dtype = xv.dtype
    fn = _normalize2 if xv.ndim == 2 else _normalize3
    fn(xv, mean.astype(dtype), scale.astype(dtype), beta.astype(dtype), out)


def reductions(dyv: np.ndarray, xv: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum(dy) and sum(dy * (x - mean)) per feature, in float64."""
    fn = _reduce2 if xv.ndim == 2 else _reduce3
    return fn(dyv, xv, mean.astype(xv.dtype), _chunks(xv.shape[0]))


def combine(dyv: np.ndarray, xv: np.ndarray, mean: np.ndarray, a: np.ndarray, k: np.ndarray,
            c: np.ndarray, dxv: np.ndarray) -> None:
    """dx = a * (dy + k * (x - mean) + c), per feature."""
    dtype = xv.dtype
    fn = _combine2 if xv.ndim == 2 else _combine3
    fn(dyv, xv, mean.astype(dtype), a.astype(dtype), k.astype(dtype), c.astype(dtype), dxv)

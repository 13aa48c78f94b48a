"""Compiled passes for large batch norm (numba, optional): the same functions as kernels.py.

`tinygrad_bn.fast.use_numba()` switches the fused op's large-input path from the numpy
block passes to these. Each pass is one loop over x (and dy) that numba vectorizes and
splits across threads, so the forward reads x twice and writes out once, and the backward
reads x and dy twice and writes dx once. The math is kernels.py's expanded closed form
(its docstring has the derivation), with every sum accumulated in float64.

Arrays arrive as (A, K) when the layout has no trailing axes (batch norm of (N, D)), else as
(A, K, B). Safety: numba's parallel loops run on one threading layer per process (tbb,
omp or workqueue, whichever numba finds first). Not every layer is safe to enter from
two Python threads at once (workqueue aborts), so calls here are serialized; GNU OpenMP
cannot run in a child forked after it ran in the parent, which `fork_safe` tells.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from .kernels import Layout

_lock = threading.Lock()  # one caller at a time: not every threading layer is thread-safe


def fork_safe() -> bool:
    """Whether a forked child may run these passes (not after GNU OpenMP ran here)."""
    try:
        return numba.threading_layer() != "omp"
    except ValueError:  # no parallel loop has run yet: no layer was started
        return True


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


def statistics(x: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and biased variance (K,)."""
    xv = x.reshape(layout.view)
    # Shifted by a first-row estimate so that data far from zero keeps its digits.
    shift = (xv[0] if xv.ndim == 2 else xv[0].mean(axis=1)).astype(np.float64)
    stats = _stats2 if xv.ndim == 2 else _stats3
    with _lock:
        s1, s2 = stats(xv, shift, _chunks(xv.shape[0]))
    m1 = s1 / layout.count
    return shift + m1, np.maximum(s2 / layout.count - m1 * m1, 0.0)


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              var: np.ndarray, eps: float, layout: Layout) -> np.ndarray:
    """out = (x - mean) * gamma * inv_std + beta, per feature, stored in x's dtype.

    The per-feature values stay float64, so x - mean is worked in float64 (float32 data
    far from zero keeps its digits; the passes are memory-bound, so it costs nothing).
    """
    out = np.empty(x.shape, x.dtype)
    scale = gamma / np.sqrt(var + eps)
    fn = _normalize2 if layout.B == 1 else _normalize3
    with _lock:
        fn(x.reshape(layout.view), mean, scale, beta, out.reshape(layout.view))
    return out


def backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
             var: np.ndarray, eps: float, layout: Layout
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx = a * (dy + k * (x - mean) + c) per feature; dgamma, dbeta (K,) float64."""
    xv, dyv = x.reshape(layout.view), upstream.reshape(layout.view)
    inv_std = 1.0 / np.sqrt(var + eps)
    reduce = _reduce2 if layout.B == 1 else _reduce3
    combine = _combine2 if layout.B == 1 else _combine3
    dx = np.empty(x.shape, x.dtype)
    with _lock:  # per-feature values in float64, as in normalize
        dbeta, sum_dy_xmu = reduce(dyv, xv, mean, _chunks(layout.A))
        k = -inv_std * inv_std * sum_dy_xmu / layout.count
        c = -dbeta / layout.count
        combine(dyv, xv, mean, gamma * inv_std, k, c, dx.reshape(layout.view))
    return dx, sum_dy_xmu * inv_std, dbeta

"""The closed form of `norm/fused.py` with fewer temporaries, for inputs the blocked or
compiled passes do not take (small or non-contiguous inputs; layer and group norm without
numba).

Same formulas, worked in float64 as the textbook does (float32 data converted once, the
result rounded once); the differences are only in memory traffic: sums by einsum instead
of a full-size product then a sum, and results updated in place in arrays created here.
The statistics take two passes (the mean, then the squares of x - mean): no cancellation.
"""

from __future__ import annotations

import functools

import numpy as np

from ..norm.spec import NormSpec

__all__ = ["statistics", "normalize", "backward"]


@functools.lru_cache(maxsize=256)
def _sum_subscripts(ndim: int, axes: tuple[int, ...]) -> str:
    # einsum subscripts for sum(a * b) over `axes` ("abc,abc->b" for axes (0, 2)).
    letters = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    return f"{letters},{letters}->{''.join(c for i, c in enumerate(letters) if i not in axes)}"


def _sum_product(a: np.ndarray, b: np.ndarray, axes: tuple[int, ...], shape: tuple[int, ...]
                 ) -> np.ndarray:
    """sum(a * b) over `axes`, reshaped to `shape`, as float64."""
    return np.einsum(_sum_subscripts(a.ndim, axes), a, b).reshape(shape).astype(np.float64)


def statistics(x: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and biased variance, two passes (no cancellation), kept axes of size 1."""
    xs = spec.grouped(x)
    axes = spec.reduce_axes
    mean = np.add.reduce(xs, axis=axes, keepdims=True, dtype=np.float64) / spec.count
    xmu = np.subtract(xs, mean, dtype=np.float64)  # float64 whatever x's dtype: no digit lost
    with np.errstate(over="ignore"):  # squares past float64's range: the textbook's inf too
        var = _sum_product(xmu, xmu, axes, mean.shape) / spec.count
    return mean, var


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              var: np.ndarray, spec: NormSpec) -> np.ndarray:
    """gamma * (x - mean) * ivar + beta in x's dtype."""
    xhat = np.subtract(spec.grouped(x), mean, dtype=np.float64)
    xhat *= 1.0 / np.sqrt(var + spec.eps)
    out = xhat.reshape(spec.x_shape)
    out *= gamma.reshape(spec.param_bshape)
    out += beta.reshape(spec.param_bshape)
    return out.astype(x.dtype, copy=False)


def backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
             var: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx in x's dtype; dgamma, dbeta in float64 with gamma's size."""
    dtype = np.dtype(np.float64)  # worked in float64 whatever x's dtype, as the textbook
    axes, count = spec.reduce_axes, spec.count
    ivar = (1.0 / np.sqrt(var + spec.eps)).astype(dtype)
    xhat = np.subtract(spec.grouped(x), mean.astype(dtype), dtype=dtype)
    xhat *= ivar
    upstream = upstream.astype(dtype, copy=False)
    param_axes = spec.param_sum_axes
    dbeta = np.add.reduce(upstream, axis=param_axes).astype(np.float64)
    dgamma = _sum_product(upstream, xhat.reshape(spec.x_shape), param_axes, dbeta.shape)
    gamma_b = gamma.reshape(spec.param_bshape)
    if param_axes == axes and spec.grouped_shape is None:
        # gamma is constant along the reduced axes (batch norm): sum(g) = gamma * dbeta and
        # sum(g * xhat) = gamma * dgamma, so dx = gamma * ivar * (dy - dbeta/N - xhat * dgamma/N).
        dx = xhat
        dx *= (dgamma / count).reshape(mean.shape).astype(dtype)
        np.subtract(upstream, dx, out=dx)
        dx -= (dbeta / count).reshape(mean.shape).astype(dtype)
        dx *= gamma_b * ivar
        return dx.astype(x.dtype, copy=False), dgamma, dbeta
    g = spec.grouped(np.multiply(upstream, gamma_b))
    mean_g = (np.add.reduce(g, axis=axes, keepdims=True) / count).astype(dtype)
    mean_gx = (_sum_product(g, xhat, axes, mean_g.shape) / count).astype(dtype)
    # dx = ivar * (g - mean(g) - xhat * mean(g * xhat)), built in xhat's buffer
    dx = xhat
    dx *= mean_gx
    np.subtract(g, dx, out=dx)
    dx -= mean_g
    dx *= ivar
    return dx.reshape(spec.x_shape).astype(x.dtype, copy=False), dgamma, dbeta

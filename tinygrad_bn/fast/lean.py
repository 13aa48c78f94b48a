"""The closed form of `norm/fused.py` with fewer temporaries, for inputs the blocked
passes do not take (small batches, layer and group norm).

Same formulas; the differences are only in memory traffic: sums by einsum instead of a
full-size product then a sum, results updated in place in arrays created here, and the
elementwise work in x's dtype. The mean accumulates in float64 (where float32 sums lose
digits: data far from zero), and float32 data far from zero is worked in float64
altogether; the other sums are of centred quantities and accumulate in x's dtype, as the
blocked kernel's do within a block.
"""

from __future__ import annotations

import functools

import numpy as np

from ..norm.spec import NormSpec

__all__ = ["statistics", "normalize", "backward", "FAR_FROM_ZERO"]

FAR_FROM_ZERO = 0.5  # |mean| / std above which float32 data is worked in float64 (as kernels.py)


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
    xmu = xs - mean.astype(x.dtype)
    var = _sum_product(xmu, xmu, axes, mean.shape) / spec.count
    return mean, var


def _working_dtype(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.dtype:
    # float32 data far from zero loses its digits in x - float32(mean) (the mean's own
    # rounding is then a sizeable fraction of the spread): such data is worked in float64.
    if x.dtype == np.float32 and np.any(np.abs(mean) > FAR_FROM_ZERO * np.sqrt(var)):
        return np.dtype(np.float64)
    return x.dtype


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              var: np.ndarray, spec: NormSpec) -> np.ndarray:
    """gamma * (x - mean) * inv_std + beta in x's dtype."""
    work = _working_dtype(x, mean, var)
    xhat = np.subtract(spec.grouped(x), mean.astype(work), dtype=work)
    xhat *= (1.0 / np.sqrt(var + spec.eps)).astype(work)
    out = xhat.reshape(spec.x_shape)
    out *= gamma.reshape(spec.param_bshape)
    out += beta.reshape(spec.param_bshape)
    return out.astype(x.dtype, copy=False)


def backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
             var: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx in x's dtype; dgamma, dbeta in float64 with gamma's size."""
    dtype = _working_dtype(x, mean, var)
    axes, count = spec.reduce_axes, spec.count
    inv_std = (1.0 / np.sqrt(var + spec.eps)).astype(dtype)
    xhat = np.subtract(spec.grouped(x), mean.astype(dtype), dtype=dtype)
    xhat *= inv_std
    upstream = upstream.astype(dtype, copy=False)
    param_axes = spec.param_sum_axes
    dbeta = np.add.reduce(upstream, axis=param_axes).astype(np.float64)
    dgamma = _sum_product(upstream, xhat.reshape(spec.x_shape), param_axes, dbeta.shape)
    gamma_b = gamma.reshape(spec.param_bshape)
    if param_axes == axes and spec.grouped_shape is None:
        # gamma is constant along the reduced axes (batch norm): sum(g) = gamma * dbeta and
        # sum(g * xhat) = gamma * dgamma, so dx = gamma * inv_std * (dy - dbeta/N - xhat * dgamma/N).
        dx = xhat
        dx *= (dgamma / count).reshape(mean.shape).astype(dtype)
        np.subtract(upstream, dx, out=dx)
        dx -= (dbeta / count).reshape(mean.shape).astype(dtype)
        dx *= gamma_b * inv_std
        return dx.astype(x.dtype, copy=False), dgamma, dbeta
    g = spec.grouped(np.multiply(upstream, gamma_b))
    mean_g = (np.add.reduce(g, axis=axes, keepdims=True) / count).astype(dtype)
    mean_gx = (_sum_product(g, xhat, axes, mean_g.shape) / count).astype(dtype)
    # dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)), built in xhat's buffer
    dx = xhat
    dx *= mean_gx
    np.subtract(g, dx, out=dx)
    dx -= mean_g
    dx *= inv_std
    return dx.reshape(spec.x_shape).astype(x.dtype, copy=False), dgamma, dbeta

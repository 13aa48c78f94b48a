"""The closed form of `norm/fused.py` with fewer temporaries, for inputs the blocked or
compiled passes do not take (small or non-contiguous inputs; layer and group norm without
numba).

Same formulas, worked in float64 as the textbook does (float32 data converted once, the
result rounded once); the differences are only in memory traffic: short sums by einsum
instead of a full-size product then a sum, and results updated in place in arrays created
here.
The statistics take two passes (the mean, then the squares of x - mean): no cancellation.
The training-mode forward (`forward_with_statistics`) takes x - mean once, for the variance
and then normalized in place.
"""

from __future__ import annotations

import functools

import numpy as np

from ..norm.spec import NormSpec

__all__ = ["statistics", "normalize", "forward_with_statistics", "backward"]


@functools.lru_cache(maxsize=256)
def _sum_subscripts(ndim: int, axes: tuple[int, ...]) -> str:
    # einsum subscripts for sum(a * b) over `axes` ("abc,abc->b" for axes (0, 2)).
    letters = "abcdefghijklmnopqrstuvwxyz"[:ndim]
    return f"{letters},{letters}->{''.join(c for i, c in enumerate(letters) if i not in axes)}"


# einsum adds its terms one by one: for longer sums, numpy's pairwise. float32 data's float64
# sums afford long running sums (their error stays far below eps32); float64 data's do not:
# 490 terms of dy * xhat that cancel were 25 eps off by einsum where the textbook's were 3.
EINSUM_MAX_TERMS = 4096
FLOAT64_EINSUM_MAX_TERMS = 32


def _sum_product(a: np.ndarray, b: np.ndarray, axes: tuple[int, ...], shape: tuple[int, ...],
                 dtype: np.dtype) -> np.ndarray:
    """sum(a * b) over `axes` of float64 arrays (of data of `dtype`), reshaped to `shape`:
    by einsum (no full-size product) where a sum has few terms, else as the textbook sums (a
    long running sum would lose digits the textbook's pairwise sum keeps)."""
    terms = 1
    for axis in axes:
        terms *= a.shape[axis]
    if terms <= (EINSUM_MAX_TERMS if dtype == np.float32 else FLOAT64_EINSUM_MAX_TERMS):
        total = np.einsum(_sum_subscripts(a.ndim, axes), a, b)
    else:
        total = np.add.reduce(np.multiply(a, b), axis=axes)
    return total.reshape(shape).astype(np.float64, copy=False)


def _float64(a: np.ndarray) -> np.ndarray:
    # A float64 array of a's values: one cast (a mixed-dtype ufunc casts in small buffers,
    # three times slower than `astype` on small inputs).
    return a.astype(np.float64, copy=False)


def statistics(x: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and biased variance, two passes (no cancellation), kept axes of size 1."""
    xs = spec.grouped(x)
    axes = spec.reduce_axes
    mean = np.add.reduce(xs, axis=axes, keepdims=True, dtype=np.float64) / spec.count
    xmu = np.subtract(xs, mean, dtype=np.float64)  # float64 whatever x's dtype: no digit lost
    with np.errstate(over="ignore"):  # squares past float64's range: the textbook's inf too
        var = _sum_product(xmu, xmu, axes, mean.shape, x.dtype) / spec.count
    return mean, var


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              var: np.ndarray, spec: NormSpec) -> np.ndarray:
    """gamma * (x - mean) * ivar + beta in x's dtype."""
    xhat = np.subtract(spec.grouped(x), mean, dtype=np.float64)
    return _scale_shift(xhat, 1.0 / np.sqrt(var + spec.eps), gamma, beta, x.dtype, spec)


def forward_with_statistics(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, spec: NormSpec
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """out in x's dtype, and the float64 mean and var of `statistics`: x - mean is taken once,
    for the variance and then normalized in place."""
    xs = spec.grouped(_float64(x))
    axes = spec.reduce_axes
    mean = np.add.reduce(xs, axis=axes, keepdims=True)
    mean /= spec.count
    xmu = xs - mean
    with np.errstate(over="ignore"):  # squares past float64's range: the textbook's inf too
        var = _sum_product(xmu, xmu, axes, mean.shape, x.dtype)
    var /= spec.count
    return _scale_shift(xmu, 1.0 / np.sqrt(var + spec.eps), gamma, beta, x.dtype, spec), mean, var


def _scale_shift(xmu: np.ndarray, ivar: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 dtype: np.dtype, spec: NormSpec) -> np.ndarray:
    # gamma * xmu * ivar + beta in xmu's (float64) buffer, rounded once to `dtype` as it is
    # stored. Where gamma is constant along the reduced axes (batch norm), gamma * ivar is one
    # factor per feature: one pass instead of two.
    gamma_b, beta_b = gamma.reshape(spec.param_bshape), beta.reshape(spec.param_bshape)
    if spec.grouped_shape is None and spec.param_sum_axes == spec.reduce_axes:
        xmu *= gamma_b * ivar
        out = xmu
    else:
        xmu *= ivar
        out = xmu.reshape(spec.x_shape)
        out *= gamma_b
    return _add_into(out, beta_b, dtype)


def _add_into(a: np.ndarray, b: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # a + b, the float64 sum rounded once to `dtype` as it is stored (no float64 copy).
    if dtype == a.dtype:
        a += b
        return a
    return np.add(a, b, out=np.empty(a.shape, dtype))


def _multiply_into(a: np.ndarray, b: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == a.dtype:
        a *= b
        return a
    return np.multiply(a, b, out=np.empty(a.shape, dtype))


def backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
             var: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx in x's dtype; dgamma, dbeta in float64 with gamma's size."""
    f64 = np.dtype(np.float64)  # worked in float64 whatever x's dtype, as the textbook
    axes, count = spec.reduce_axes, spec.count
    mean, var = mean.astype(f64, copy=False), var.astype(f64, copy=False)
    ivar = 1.0 / np.sqrt(var + spec.eps)
    xhat = spec.grouped(_float64(x)) - mean
    xhat *= ivar
    upstream = _float64(upstream)
    param_axes = spec.param_sum_axes
    dbeta = np.add.reduce(upstream, axis=param_axes)
    dgamma = _sum_product(upstream, xhat.reshape(spec.x_shape), param_axes, dbeta.shape,
                          x.dtype)
    gamma_b = gamma.reshape(spec.param_bshape)
    if param_axes == axes and spec.grouped_shape is None:
        # gamma is constant along the reduced axes (batch norm): sum(g) = gamma * dbeta and
        # sum(g * xhat) = gamma * dgamma, so dx = gamma * ivar * (dy - dbeta/N - xhat * dgamma/N).
        dx = xhat
        dx *= (dgamma / count).reshape(mean.shape)
        np.subtract(upstream, dx, out=dx)
        dx -= (dbeta / count).reshape(mean.shape)
        return _multiply_into(dx, gamma_b * ivar, x.dtype), dgamma, dbeta
    g = spec.grouped(np.multiply(upstream, gamma_b))
    mean_g = np.add.reduce(g, axis=axes, keepdims=True)
    mean_g /= count
    mean_gx = _sum_product(g, xhat, axes, mean_g.shape, x.dtype)
    mean_gx /= count
    # dx = ivar * (g - mean(g) - xhat * mean(g * xhat)), built in xhat's buffer
    dx = xhat
    dx *= mean_gx
    np.subtract(g, dx, out=dx)
    dx -= mean_g
    return _multiply_into(dx, ivar, x.dtype).reshape(spec.x_shape), dgamma, dbeta

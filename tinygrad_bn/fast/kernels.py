"""Blocked batch norm for large inputs: the closed form of `norm/fused.py`, reorganized.

Used where x is C-contiguous, large, and reduced over its leading axes and possibly its
trailing ones (batch norm of (N, D) over 0, of (N, C, H, W) over (0, 2, 3)). x is viewed
as (A, K) or (A, K, B), with the statistics over A (and B) for each feature k.

Why it is fast: every pass walks x in blocks of about half a megabyte, so the few numpy
calls per block run on data in cache; the statistics take one pass (sum and sum of
squares) instead of two; nothing of x's size is allocated besides the result; the blocks
are split between threads (numpy releases the GIL).

Why it equals the closed form. With xmu = x - mean, a = gamma * inv_std, the reference is
    dx = a * (dy - mean(dy) - xhat * mean(dy * xhat)),   xhat = xmu * inv_std.
Since xhat * mean(dy * xhat) = xmu * inv_std^2 * sum(dy * xmu) / N, this is
    dx = a * (dy + k * xmu + c),   k = -inv_std^2 * sum(dy * xmu) / N,   c = -sum(dy) / N,
one multiply-add chain per element once the two per-feature sums are known; and
    sum(dy * xmu) = sum(dy * x) - mean * sum(dy),   dgamma = inv_std * sum(dy * xmu).
Likewise var = E[(x - s)^2] - (mean - s)^2 for any shift s, and out = x * scale + offset
with scale = gamma * inv_std, offset = beta - mean * scale.

Why it stays exact: those expanded forms lose precision in proportion to |mean| / std.
The first block estimates that ratio; data far from zero takes the shifted forms instead
(x - shift before squaring, x - mean before scaling), at one more numpy call per block.
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

__all__ = ["Layout", "layout_for", "statistics", "normalize", "backward", "set_num_threads",
           "num_threads", "MIN_ELEMENTS"]

MIN_ELEMENTS = 1 << 16      # below this the closed form in plain numpy is as fast
BLOCK_BYTES = 1 << 19       # about 0.5 MB per block: in L2 with room for a temporary
# |mean| / std up to which the unshifted one-pass forms are used. float32 sums carry more
# rounding than float64 ones, so it takes the shifted forms sooner.
FAST_RATIO = {np.dtype(np.float64): 8.0, np.dtype(np.float32): 0.5}

_threads = max(1, min(2, os.cpu_count() or 1))
_executor: ThreadPoolExecutor | None = None
_executor_pid: int | None = None
_executor_lock = threading.Lock()
_scratch = threading.local()


def set_num_threads(count: int) -> None:
    """How many threads the blocked passes use (default: 2, or 1 on a one-core machine)."""
    global _threads
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    with _executor_lock:
        _threads = count
        _drop_executor()


def num_threads() -> int:
    """The thread count set by `set_num_threads`."""
    return _threads


def _drop_executor() -> None:
    global _executor, _executor_pid
    if _executor is not None and _executor_pid == os.getpid():
        _executor.shutdown(wait=True)
    _executor, _executor_pid = None, None


def _forget_executor_in_child() -> None:
    # A forked child inherits the executor object but none of its threads: start afresh.
    global _executor, _executor_pid
    _executor, _executor_pid = None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_executor_in_child)


def _run_parallel(work: Callable[[list[tuple[int, int]]], Any], parts: list) -> list[Any]:
    global _executor, _executor_pid
    if len(parts) == 1:
        return [work(parts[0])]
    with _executor_lock:
        if _executor is None or _executor_pid != os.getpid():
            _executor = ThreadPoolExecutor(_threads, thread_name_prefix="tinygrad_bn")
            _executor_pid = os.getpid()
        executor = _executor
    return list(executor.map(work, parts))


def _scratch_block(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread block-sized temporary, kept between calls (a fresh half-megabyte array
    would be fresh pages, faulted in on every pass)."""
    size = math.prod(shape)
    cached = getattr(_scratch, "buffer", None)
    if cached is None or cached.dtype != dtype or cached.size < size:
        cached = np.empty(size, dtype)
        _scratch.buffer = cached
    return cached[:size].reshape(shape)


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


def layout_for(x: Any, reduce_axes: tuple[int, ...]) -> Layout | None:
    """The blocked layout for x, or None when the plain closed form should be used."""
    if type(x) is not np.ndarray or x.size < MIN_ELEMENTS or not x.flags.c_contiguous \
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


def _parts(layout: Layout, itemsize: int) -> list[list[tuple[int, int]]]:
    """Row blocks [start, stop) over A, dealt into one contiguous, non-empty run per thread."""
    rows = max(1, BLOCK_BYTES // (layout.K * layout.B * itemsize))
    spans = [(s, min(s + rows, layout.A)) for s in range(0, layout.A, rows)]
    threads = min(_threads, len(spans))
    return [spans[i * len(spans) // threads:(i + 1) * len(spans) // threads]
            for i in range(threads)]


def _centre(block: np.ndarray, mean: tuple[np.ndarray, np.ndarray], out: np.ndarray) -> np.ndarray:
    """block - mean into `out`, with the float64 mean given as two terms of x's dtype.

    x - hi is exact for x near the mean (Sterbenz), and lo = mean - hi restores the digits
    that rounding the mean to float32 would lose: x - mean to float32 accuracy even when
    |mean| / std is large.
    """
    hi, lo = mean
    np.subtract(block, hi, out=out)
    if lo is not None:
        np.subtract(out, lo, out=out)
    return out


def _split(mean: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]
           ) -> tuple[np.ndarray, np.ndarray | None]:
    # The float64 mean as hi + lo in dtype (lo is None when dtype holds it exactly enough).
    hi = mean.astype(dtype)
    if dtype == np.float64:
        return hi.reshape(shape), None
    return hi.reshape(shape), (mean - hi).astype(dtype).reshape(shape)


def _sum_parts(results: list[tuple[np.ndarray, ...]], index: int) -> np.ndarray:
    total = results[0][index].copy()
    for result in results[1:]:
        total += result[index]
    return total


def statistics(x: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and biased variance (K,), one pass over x."""
    dtype = x.dtype
    xv = x.reshape(layout.view)
    axes, pview = layout.axes, layout.param_view
    parts = _parts(layout, dtype.itemsize)
    # Estimate |mean| / std from the first block (two-pass there, it is in cache).
    first = xv[parts[0][0][0]:parts[0][0][1]]
    first_mean = first.mean(axis=axes, dtype=np.float64)
    first_std = np.sqrt(np.mean((first - first_mean.reshape(pview)) ** 2, axis=axes,
                                dtype=np.float64))
    shifted = bool(np.any(np.abs(first_mean) > FAST_RATIO[dtype] * first_std))
    shift = first_mean.astype(dtype).reshape(pview)

    def sums(spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        s1 = np.zeros(layout.K)
        s2 = np.zeros(layout.K)
        rows = spans[0][1] - spans[0][0]
        buffer = _scratch_block((rows, *layout.view[1:]), dtype) if shifted else None
        for start, stop in spans:
            block = xv[start:stop]
            if buffer is not None:
                block = np.subtract(block, shift, out=buffer[: stop - start])
            s1 += block.sum(axis=axes)
            s2 += np.einsum(layout.subscripts, block, block)
        return s1, s2

    results = _run_parallel(sums, parts)
    m1 = _sum_parts(results, 0) / layout.count
    var = np.maximum(_sum_parts(results, 1) / layout.count - m1 * m1, 0.0)
    mean = m1 + shift.reshape(layout.K).astype(np.float64) if shifted else m1
    return mean, var


def normalize(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
              var: np.ndarray, eps: float, layout: Layout) -> np.ndarray:
    """out = gamma * (x - mean) / sqrt(var + eps) + beta; gamma, beta, mean, var: (K,) float64."""
    dtype = x.dtype
    xv = x.reshape(layout.view)
    pview = layout.param_view
    inv_std = 1.0 / np.sqrt(var + eps)
    scale64 = gamma * inv_std
    expanded = not np.any(np.abs(mean) * inv_std > FAST_RATIO[dtype])
    scale = scale64.astype(dtype).reshape(pview)
    offset = (beta - mean * scale64 if expanded else beta).astype(dtype).reshape(pview)
    mean_d = _split(mean, dtype, pview)
    out = np.empty(x.shape, dtype)
    ov = out.reshape(layout.view)

    def run(spans: list[tuple[int, int]]) -> None:
        for start, stop in spans:
            block, target = xv[start:stop], ov[start:stop]
            if expanded:
                np.multiply(block, scale, out=target)
            else:
                _centre(block, mean_d, target)
                np.multiply(target, scale, out=target)
            np.add(target, offset, out=target)

    _run_parallel(run, _parts(layout, dtype.itemsize))
    return out


def backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
             var: np.ndarray, eps: float, layout: Layout
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (x's shape and dtype), dgamma and dbeta (K,) float64, by the expanded closed form."""
    dtype = x.dtype
    xv, dyv = x.reshape(layout.view), upstream.reshape(layout.view)
    axes, pview, count = layout.axes, layout.param_view, layout.count
    inv_std = 1.0 / np.sqrt(var + eps)
    parts = _parts(layout, dtype.itemsize)
    expanded = not np.any(np.abs(mean) * inv_std > FAST_RATIO[dtype])
    mean_d = _split(mean, dtype, pview)
    rows = parts[0][0][1] - parts[0][0][0]

    def sums(spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        sum_dy = np.zeros(layout.K)
        sum_dy_x = np.zeros(layout.K)
        buffer = None if expanded else _scratch_block((rows, *layout.view[1:]), dtype)
        for start, stop in spans:
            dy, block = dyv[start:stop], xv[start:stop]
            if buffer is not None:
                block = _centre(block, mean_d, buffer[: stop - start])
            sum_dy += dy.sum(axis=axes)
            sum_dy_x += np.einsum(layout.subscripts, dy, block)
        return sum_dy, sum_dy_x

    results = _run_parallel(sums, parts)
    dbeta = _sum_parts(results, 0)
    # sum(dy * (x - mean)): directly on the shifted path, by expansion on the other.
    sum_dy_xmu = _sum_parts(results, 1) - (mean * dbeta if expanded else 0.0)
    dgamma = sum_dy_xmu * inv_std
    a = gamma * inv_std
    k = -inv_std * inv_std * sum_dy_xmu / count
    c = -dbeta / count - (k * mean if expanded else 0.0)  # folds k * (-mean) in when expanded
    a_d, k_d, c_d = (v.astype(dtype).reshape(pview) for v in (a, k, c))
    dx = np.empty(x.shape, dtype)
    dxv = dx.reshape(layout.view)

    def combine(spans: list[tuple[int, int]]) -> None:
        buffer = _scratch_block((rows, *layout.view[1:]), dtype)
        for start, stop in spans:
            t = buffer[: stop - start]
            if expanded:
                np.multiply(xv[start:stop], k_d, out=t)
            else:
                _centre(xv[start:stop], mean_d, t)
                np.multiply(t, k_d, out=t)
            np.add(t, dyv[start:stop], out=t)
            np.add(t, c_d, out=t)
            np.multiply(t, a_d, out=dxv[start:stop])

    _run_parallel(combine, parts)
    return dx, dgamma, dbeta

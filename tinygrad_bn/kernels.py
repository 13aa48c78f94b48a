"""Fast fused batch norm for large inputs: blocked passes, one-pass statistics, two threads.

Used by the fused op when x is C-contiguous, large, and reduced over its leading axes and
possibly its trailing ones (batch norm of (N, D) over 0, of (N, C, H, W) over (0, 2, 3)).
x is viewed as (A, K) or (A, K, B) with the statistics over A and B, per feature k.

Why it is fast: every pass walks x in blocks of about half a megabyte, so the few numpy
calls per block run on data in cache; the statistics need one pass (sum and sum of
squares) instead of two; nothing of x's size is allocated besides the output (from the
workspace pool); and the blocks are split between two threads (numpy releases the GIL).
The backward recomputes what it needs from x, mean and inv_std, so the forward keeps no
normalized copy of x.

Why it stays exact: the fast formulas (E[x^2] - mean^2, x*scale + shift, sum(dy*x) -
mean*sum(dy)) lose precision in proportion to |mean| / std. The first block estimates
that ratio; data far from zero takes the shifted forms instead (x - shift before squaring,
(x - mean) before scaling), which cost one more numpy call per block.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import workspace

__all__ = ["Layout", "layout_for", "forward", "backward", "set_num_threads", "use_numba",
           "numba_enabled", "MIN_ELEMENTS"]

MIN_ELEMENTS = 1 << 16      # below this the plain numpy path is as fast
BLOCK_BYTES = 1 << 19       # about 0.5 MB per block: in L2 with room for a temporary
# |mean| / std up to which the unshifted one-pass forms are used. float32 sums carry more
# rounding than float64 ones, so it takes the shifted forms sooner.
FAST_RATIO = {np.dtype(np.float64): 8.0, np.dtype(np.float32): 0.5}

_threads = max(1, min(2, os.cpu_count() or 1))
_executor: ThreadPoolExecutor | None = None
_scratch = threading.local()


def _scratch_block(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread block-sized temporary, kept between calls (a fresh half-megabyte array
    would be fresh pages, faulted in on every pass)."""
    size = int(np.prod(shape))
    cached = getattr(_scratch, "buffer", None)
    if cached is None or cached.dtype != dtype or cached.size < size:
        cached = np.empty(size, dtype)
        _scratch.buffer = cached
    return cached[:size].reshape(shape)


_compiled: Any = None  # the numba_kernels module while use_numba() is on


def use_numba(enabled: bool = True) -> None:
    """Run the large-input passes compiled with numba (an optional accelerator).

    The numpy passes are the default. Raises ImportError, saying how to get it, when numba
    is not installed. Setting TINYGRAD_BN_NUMBA=1 in the environment turns it on at import.
    """
    global _compiled
    if not enabled:
        _compiled = None
        return
    try:
        from . import numba_kernels
    except ImportError as error:
        raise ImportError(f"use_numba: numba is not installed ({error}); "
                          f"`pip install numba` adds it, the numpy path works without") from None
    _compiled = numba_kernels


def numba_enabled() -> bool:
    """Whether the compiled passes are in use."""
    return _compiled is not None


def set_num_threads(count: int) -> None:
    """How many threads the blocked passes use (default: 2, or 1 on a one-core machine)."""
    global _threads, _executor
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    _threads = count
    if _executor is not None:
        _executor.shutdown(wait=True)
        _executor = None


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


def layout_for(x: np.ndarray, reduce_axes: tuple[int, ...]) -> Layout | None:
    """The blocked layout for x, or None when the plain path should be used."""
    ndim = x.ndim
    if x.size < MIN_ELEMENTS or not x.flags.c_contiguous or 0 not in reduce_axes:
        return None
    lead = 0
    while lead in reduce_axes:
        lead += 1
    trail = ndim
    while trail - 1 in reduce_axes and trail - 1 >= lead:
        trail -= 1
    if set(reduce_axes) != set(range(lead)) | set(range(trail, ndim)) or trail == lead:
        return None
    shape = x.shape
    layout = Layout(int(np.prod(shape[:lead])), int(np.prod(shape[lead:trail])),
                    int(np.prod(shape[trail:])))
    return layout if layout.A > 1 else None


def _spans(layout: Layout, itemsize: int) -> list[list[tuple[int, int]]]:
    """Row blocks [start, stop) over A, dealt into one contiguous run per thread."""
    rows = max(1, BLOCK_BYTES // (layout.K * layout.B * itemsize))
    spans = [(s, min(s + rows, layout.A)) for s in range(0, layout.A, rows)]
    threads = min(_threads, len(spans))
    per = -(-len(spans) // threads)
    return [spans[i * per:(i + 1) * per] for i in range(threads)]


def _parallel(work: Callable[[list[tuple[int, int]]], Any], parts: Sequence) -> list[Any]:
    global _executor
    if len(parts) == 1:
        return [work(parts[0])]
    if _executor is None:
        _executor = ThreadPoolExecutor(_threads, thread_name_prefix="tinygrad_bn")
    return list(_executor.map(work, parts))


def _sum_parts(results: list[tuple[np.ndarray, ...]], index: int) -> np.ndarray:
    total = results[0][index].copy()
    for result in results[1:]:
        total += result[index]
    return total


def forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, layout: Layout
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """out = gamma * (x - mean) / sqrt(var + eps) + beta over the layout's reduced axes.

    gamma, beta: (K,) float64. Returns out (x's shape, from the workspace pool) and the
    float64 per-feature mean, var and inv_std (K,).
    """
    dtype = x.dtype
    xv = x.reshape(layout.view)
    if _compiled is not None:
        mean, var = _compiled.statistics(xv)
        inv_std = 1.0 / np.sqrt(var + eps)
        out = workspace.empty(x.shape, dtype)
        _compiled.normalize(xv, mean, gamma * inv_std, beta, out.reshape(layout.view))
        return out, mean, var, inv_std
    axes, pview, count = layout.axes, layout.param_view, layout.count
    parts = _spans(layout, dtype.itemsize)
    # Estimate |mean| / std from the first block (two-pass there, it is in cache).
    first = xv[parts[0][0][0]:parts[0][0][1]]
    first_mean = first.mean(axis=axes, dtype=np.float64)
    first_std = np.sqrt(np.mean((first - first_mean.reshape(pview)) ** 2, axis=axes,
                                dtype=np.float64))
    shifted = bool(np.any(np.abs(first_mean) > FAST_RATIO[dtype] * first_std))
    shift = first_mean.astype(dtype).reshape(pview)

    def statistics(spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        s1 = np.zeros(layout.K)
        s2 = np.zeros(layout.K)
        buffer = (_scratch_block((spans[0][1] - spans[0][0], *layout.view[1:]), dtype)
                  if shifted else None)
        for start, stop in spans:
            block = xv[start:stop]
            if buffer is not None:
                block = np.subtract(block, shift, out=buffer[: stop - start])
            s1 += block.sum(axis=axes)
            s2 += np.einsum(layout.subscripts, block, block)
        return s1, s2

    results = _parallel(statistics, parts)
    m1 = _sum_parts(results, 0) / count
    var = np.maximum(_sum_parts(results, 1) / count - m1 * m1, 0.0)
    mean = m1 + shift.reshape(layout.K).astype(np.float64) if shifted else m1
    inv_std = 1.0 / np.sqrt(var + eps)
    scale64 = gamma * inv_std
    fast_output = not np.any(np.abs(mean) * inv_std > FAST_RATIO[dtype])
    scale = scale64.astype(dtype).reshape(pview)
    offset = (beta - mean * scale64 if fast_output else beta).astype(dtype).reshape(pview)
    mean_d = mean.astype(dtype).reshape(pview)
    out = workspace.empty(x.shape, dtype)
    ov = out.reshape(layout.view)

    def normalize(spans: list[tuple[int, int]]) -> None:
        for start, stop in spans:
            block, target = xv[start:stop], ov[start:stop]
            if fast_output:
                np.multiply(block, scale, out=target)
            else:
                np.subtract(block, mean_d, out=target)
                np.multiply(target, scale, out=target)
            np.add(target, offset, out=target)

    _parallel(normalize, parts)
    return out, mean, var, inv_std


def backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray,
             inv_std: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The closed-form VJP from x, mean and inv_std (K,). Returns dx, dgamma (K,), dbeta (K,)."""
    dtype = x.dtype
    xv, dyv = x.reshape(layout.view), upstream.reshape(layout.view)
    if _compiled is not None:
        dbeta, sum_dy_xmu = _compiled.reductions(dyv, xv, mean)
        count = layout.count
        dx = workspace.empty(x.shape, dtype)
        _compiled.combine(dyv, xv, mean, gamma * inv_std, -inv_std * inv_std * sum_dy_xmu / count,
                          -dbeta / count, dx.reshape(layout.view))
        return dx, sum_dy_xmu * inv_std, dbeta
    axes, pview, count = layout.axes, layout.param_view, layout.count
    parts = _spans(layout, dtype.itemsize)
    fast = not np.any(np.abs(mean) * inv_std > FAST_RATIO[dtype])
    mean_d = mean.astype(dtype).reshape(pview)
    rows = parts[0][0][1] - parts[0][0][0]

    def reductions(spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        sum_dy = np.zeros(layout.K)
        sum_dy_x = np.zeros(layout.K)
        buffer = None if fast else _scratch_block((rows, *layout.view[1:]), dtype)
        for start, stop in spans:
            dy, block = dyv[start:stop], xv[start:stop]
            if buffer is not None:
                block = np.subtract(block, mean_d, out=buffer[: stop - start])
            sum_dy += dy.sum(axis=axes)
            sum_dy_x += np.einsum(layout.subscripts, dy, block)
        return sum_dy, sum_dy_x

    results = _parallel(reductions, parts)
    dbeta = _sum_parts(results, 0)
    # sum(dy * (x - mean)): directly on the shifted path, by expansion on the fast one.
    sum_dy_xmu = _sum_parts(results, 1) - (mean * dbeta if fast else 0.0)
    dgamma = sum_dy_xmu * inv_std
    # dx = a * (dy - mean(dy) + k * (x - mean)) with a = gamma*inv_std, k = -inv_std^2 * mean(dy*xmu)
    a = gamma * inv_std
    k = -inv_std * inv_std * sum_dy_xmu / count
    c = -dbeta / count - (k * mean if fast else 0.0)
    a_d, k_d, c_d = (v.astype(dtype).reshape(pview) for v in (a, k, c))
    dx = workspace.empty(x.shape, dtype)
    dxv = dx.reshape(layout.view)

    def combine(spans: list[tuple[int, int]]) -> None:
        buffer = _scratch_block((rows, *layout.view[1:]), dtype)
        for start, stop in spans:
            t = buffer[: stop - start]
            if fast:
                np.multiply(xv[start:stop], k_d, out=t)
            else:
                np.subtract(xv[start:stop], mean_d, out=t)
                np.multiply(t, k_d, out=t)
            np.add(t, dyv[start:stop], out=t)
            np.add(t, c_d, out=t)
            np.multiply(t, a_d, out=dxv[start:stop])

    _parallel(combine, parts)
    return dx, dgamma, dbeta


if os.environ.get("TINYGRAD_BN_NUMBA") == "1":
    use_numba()

"""The fused normalization's fast path, registered on `FusedNorm` for numpy arrays.

Where each call goes (x a C-contiguous float32/float64 array, else `lean.py`):
- with numba installed (the `[fast]` extra) and not switched off: up to
  `SMALL_MAX_ELEMENTS` elements, one serial compiled call per seam (`numba_small.py`: the
  time of a small normalization is its calls); above, the parallel compiled passes of
  `numba_kernels.py` for the whole family: batch and spatial batch norm as columns, layer
  and group norm as rows;
- without it: the blocked numpy passes of `kernels.py`, as columns for large batch and
  spatial batch norm, as blocks of whole rows for large layer and group norm;
- everything else: `lean.py`, the closed form with fewer temporaries.
Nodes (a VJP evaluated on Nodes) always get the textbook functions of `norm/fused.py`.

Nothing happens at import: numba is imported, TINYGRAD_BN_NUMBA read and the fork handler
registered by the first normalization that could use the compiled passes. TINYGRAD_BN_NUMBA=0
switches them off, =1 asks for them (a warning when numba is missing); `use_numba()` decides
in code, and wins over the environment.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..norm import fused
from ..norm.fused import FusedNorm
from ..norm.spec import NormSpec
from . import kernels, lean
from .registry import fast_variant

__all__ = ["use_numba", "numba_enabled", "COMPILED_MIN_ELEMENTS"]

COMPILED_MIN_ELEMENTS = 1 << 12  # below this a compiled pass's launch costs more than it saves
SMALL_MAX_ELEMENTS = 1 << 16  # up to this, one serial compiled call per seam (numba_small.py)
# Below this waking a second thread costs more than it saves. Batch norm 256x1024 (2^18),
# forward+backward, one thread / two: 368 / 247 us float32, 491 / 312 us float64 on an idle
# machine; with one other busy process on two cores, two threads were 5-15% slower.
PARALLEL_MIN_ELEMENTS = 1 << 17


class _Backend:
    """Which passes run: decided once, at the first call that asks (or by `use_numba`)."""

    decided = False
    compiled: ModuleType | None = None  # numba_kernels when in use


_passes = _Backend()
_decide_lock = threading.Lock()
_fork_handler_registered = False


def _import_compiled() -> ModuleType:
    global _fork_handler_registered
    try:
        from . import numba_kernels
    except ImportError as error:
        raise ImportError(f"use_numba: numba is not installed ({error}); `pip install numba` "
                          f"(or the package's [fast] extra) adds it, the numpy path works "
                          f"without") from None
    if not _fork_handler_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_handler_registered = True
    return numba_kernels


def use_numba(enabled: bool = True) -> None:
    """Run the fused normalizations' passes compiled with numba (True) or in numpy (False).

    By default the compiled passes are used whenever numba is installed; this overrides that
    and TINYGRAD_BN_NUMBA. Raises ImportError, saying how to get numba, when it is missing.
    A child process forked after the compiled passes ran on GNU OpenMP (which cannot run in
    such a child) uses the numpy passes.
    """
    with _decide_lock:
        _passes.compiled = _import_compiled() if enabled else None
        _passes.decided = True


def _decide() -> ModuleType | None:
    with _decide_lock:
        if not _passes.decided:
            wanted = os.environ.get("TINYGRAD_BN_NUMBA", "")
            if wanted != "0":
                try:
                    _passes.compiled = _import_compiled()
                except ImportError as error:
                    if wanted == "1":
                        warnings.warn(f"TINYGRAD_BN_NUMBA=1: {error}", RuntimeWarning,
                                      stacklevel=4)
            _passes.decided = True
    return _passes.compiled


def _compiled() -> ModuleType | None:
    return _passes.compiled if _passes.decided else _decide()


def numba_enabled() -> bool:
    """Whether the compiled passes are in use (decides now if nothing has yet)."""
    return _compiled() is not None


def _after_fork_in_child() -> None:
    global _decide_lock
    _decide_lock = threading.Lock()
    if _passes.compiled is not None and not _passes.compiled.fork_safe():
        _passes.compiled = None


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_small: ModuleType | None = None  # numba_small, imported by the first small compiled call


@dataclass(frozen=True)
class SmallLayout:
    """How a small C-contiguous x is handed to `numba_small`: as columns (A, K, B) with
    gamma flat, or as rows (N * G, C, S) with gamma as (G, C); `kept` is the shape the
    statistics are returned in (the reduced axes kept as size 1)."""

    rows: bool
    view: tuple[int, int, int]
    param_view: tuple[int, ...]
    kept: tuple[int, ...]


def _small_layout(x: np.ndarray, spec: NormSpec) -> SmallLayout | None:
    shape = spec.grouped_shape or spec.x_shape
    kept = tuple(1 if a in spec.reduce_axes else n for a, n in enumerate(shape))
    if spec.grouped_shape is None:
        columns = kernels.layout_for(x, spec.reduce_axes, 0)
        if columns is not None:
            return SmallLayout(False, (columns.A, columns.K, columns.B), (columns.K,), kept)
    rows = kernels.row_layout_for(x, spec, 0)
    if rows is None:
        return None
    return SmallLayout(True, (rows.N * rows.G, rows.C, rows.S), rows.param_view, kept)


def _small_passes() -> ModuleType:
    global _small
    if _small is None:
        from . import numba_small
        _small = numba_small
    return _small


def _is_array(x: Any, *args: Any, **params: Any) -> bool:
    return type(x) is np.ndarray and x.dtype in _FLOATS


def _route(x: np.ndarray, spec: NormSpec) -> tuple[str, Any, ModuleType | None]:
    """("small" | "columns" | "rows" | "blocked" | "blocked rows" | "lean", layout, compiled
    module: numba_small for "small", numba_kernels for "columns" and "rows")."""
    compiled = _compiled()
    path, layout = _plan(x.shape, x.strides, x.dtype, spec, compiled is not None)
    if path == "small":
        return path, layout, _small_passes()
    return path, layout, compiled if path in ("columns", "rows") else None


@functools.lru_cache(maxsize=512)
def _plan(shape: tuple[int, ...], strides: tuple[int, ...], dtype: np.dtype, spec: NormSpec,
          compiled: bool) -> tuple[str, Any]:
    # Decided by shape, strides and dtype alone: cached (a training loop asks every step).
    x = np.lib.stride_tricks.as_strided(np.empty(1, dtype), shape, strides)
    if compiled and x.size <= SMALL_MAX_ELEMENTS:
        small = _small_layout(x, spec)
        if small is not None:
            return "small", small
    if compiled:
        if spec.grouped_shape is None:
            layout = kernels.layout_for(x, spec.reduce_axes, COMPILED_MIN_ELEMENTS)
            if layout is not None:
                return "columns", layout
        rows = kernels.row_layout_for(x, spec, COMPILED_MIN_ELEMENTS)
        if rows is not None:
            return "rows", rows
        return "lean", None
    if spec.grouped_shape is None:
        layout = kernels.layout_for(x, spec.reduce_axes)
        if layout is not None:
            return "blocked", layout
    rows = kernels.row_layout_for(x, spec, kernels.MIN_ELEMENTS)
    if rows is not None:
        return "blocked rows", rows
    return "lean", None


def _kept(values: np.ndarray, spec: NormSpec) -> np.ndarray:
    # Per-statistic values in the shape the textbook returns (reduced axes kept as size 1).
    shape = spec.grouped_shape or spec.x_shape
    return values.reshape(tuple(1 if a in spec.reduce_axes else n for a, n in enumerate(shape)))


def _finite(*arrays: np.ndarray) -> bool:
    """Whether every value is finite, in one call per array (a small step's few microseconds
    matter): sum(a * a) is inf or NaN wherever a holds inf or NaN. It is inf for values past
    the square root of the dtype's largest (1e154 in float64, 1e19 in float32) too, which only
    sends such an input to the textbook, whose answer is the one wanted anyway."""
    for a in arrays:  # (a dot product warns of nothing: no error state to set)
        if not math.isfinite(np.vdot(a, a)):
            return False
    return True


# Statistics that are not finite are taken again by the textbook (`norm.fused.statistics`):
# a sum the passes reorder for speed may overflow where the textbook's pairwise one does not
# (a float64 feature alternating +-max: its mean NaN where the textbook's is 0, var inf, and
# out and dx finite). Where x itself holds NaN or inf, that gives the same answer again.
@fast_variant(FusedNorm, "statistics", when=_is_array)
def fast_statistics(x: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray]:
    """The batch mean and biased variance, kept-axes shaped (`FusedNorm.statistics`)."""
    mean, var = _statistics(x, spec)
    return (mean, var) if _finite(mean, var) else fused.statistics(x, spec)


def _statistics(x: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray]:
    path, layout, compiled = _route(x, spec)
    if path == "lean":
        return lean.statistics(x, spec)
    if path == "small":
        mean, var = compiled.statistics(x, layout.view, layout.rows)
        return mean.reshape(layout.kept), var.reshape(layout.kept)
    threads = _threads_for(x)
    if path == "columns":
        mean, var = compiled.column_statistics(x, layout, threads)
    elif path == "rows":
        mean, var = compiled.row_statistics_of(x, layout, threads)
    elif path == "blocked rows":
        mean, var = kernels.row_statistics(x, layout)
    else:
        mean, var = kernels.statistics(x, layout)
    return _kept(mean, spec), _kept(var, spec)


@fast_variant(FusedNorm, "forward", when=_is_array)
def fast_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, spec: NormSpec,
                 mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """out (x's shape and dtype) from the statistics (`FusedNorm.forward`)."""
    path, layout, compiled = _route(x, spec)
    if path == "lean":
        return lean.normalize(x, gamma, beta, mean, var, spec)
    if path == "small":
        return compiled.normalize(x, _small_param(gamma, layout), _small_param(beta, layout),
                                  _flat64(mean), _flat64(var), spec.eps, layout.view, layout.rows)
    mean, var = _flat64(mean), _flat64(var)
    if path == "blocked rows":
        return kernels.row_normalize(x, _per(gamma, layout), _per(beta, layout), mean, var,
                                     spec.eps, layout)
    if path == "rows":
        return compiled.row_normalize_of(x, _per(gamma, layout), _per(beta, layout), mean, var,
                                         spec.eps, layout, _threads_for(x))
    gamma, beta = _flat64(gamma), _flat64(beta)
    if path == "columns":
        return compiled.column_normalize(x, gamma, beta, mean, var, spec.eps, layout,
                                         _threads_for(x))
    return kernels.normalize(x, gamma, beta, mean, var, spec.eps, layout)


@fast_variant(FusedNorm, "forward_with_statistics", when=_is_array)
def fast_forward_with_statistics(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *,
                                 spec: NormSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """out, and the batch mean and variance kept-axes shaped
    (`FusedNorm.forward_with_statistics`)."""
    out, mean, var = _forward_with_statistics(x, gamma, beta, spec)
    if _finite(mean, var):
        return out, mean, var
    mean, var = fused.statistics(x, spec)  # see `fast_statistics`
    return fast_forward(x, gamma, beta, spec=spec, mean=mean, var=var), mean, var


def _forward_with_statistics(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                             spec: NormSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path, layout, compiled = _route(x, spec)
    if path == "small":
        out, mean, var = compiled.forward(x, _small_param(gamma, layout),
                                          _small_param(beta, layout), spec.eps, layout.view,
                                          layout.rows)
        return out, mean.reshape(layout.kept), var.reshape(layout.kept)
    if path == "lean":
        return lean.forward_with_statistics(x, gamma, beta, spec)
    # Each of these takes the statistics of a block (a channel, a row, a block of rows) and
    # normalizes it while it is in cache: x is read once, not twice.
    if path == "columns":
        out, mean, var = compiled.column_forward_with_statistics(
            x, _flat64(gamma), _flat64(beta), spec.eps, layout, _threads_for(x))
    elif path == "rows":
        out, mean, var = compiled.row_forward_of(x, _per(gamma, layout), _per(beta, layout),
                                                 spec.eps, layout, _threads_for(x))
    elif path == "blocked rows":
        out, mean, var = kernels.row_forward_with_statistics(
            x, _per(gamma, layout), _per(beta, layout), spec.eps, layout)
    else:  # "blocked": the statistics over all rows first, then the normalize pass
        mean, var = _statistics(x, spec)
        return fast_forward(x, gamma, beta, spec=spec, mean=mean, var=var), mean, var
    return out, _kept(mean, spec), _kept(var, spec)


# Up to this many values per statistic the backward is the textbook's own: with two values
# dx = ivar * (g - mean(g) - xhat * mean(g * xhat)) is a difference of nearly equal terms
# (1 - xhat^2 = eps / (var + eps)), so any other order of the same operations rounds to a
# different few thousand eps of it: the passes below broke fast <= 1.5x the textbook's error
# on 15-50% of random two-value inputs, and on a few in a hundred with three values. Such
# inputs (batches of two or three, one-pixel groups) are rare and mostly small; no cheaper
# formula keeps the textbook's digits there.
TEXTBOOK_MAX_COUNT = 3


def _backward_pays(upstream: Any, x: Any, gamma: Any, *args: Any, spec: NormSpec,
                   **params: Any) -> bool:
    # A gamma of inf: g = gamma * dy is inf, and the textbook's mean(g) makes every dx of that
    # feature NaN (inf - inf), where the passes' gamma * mean(dy) leaves some of them inf.
    return (_is_array(x) and spec.count > TEXTBOOK_MAX_COUNT and type(gamma) is np.ndarray
            and _finite(gamma))


@fast_variant(FusedNorm, "backward", when=_backward_pays)
def fast_backward(upstream: np.ndarray, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                  out: np.ndarray, *, spec: NormSpec, mean: np.ndarray, var: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx (x's shape), dgamma and dbeta (gamma's shape) by the closed form
    (`FusedNorm.backward`)."""
    path, layout, compiled = _route(x, spec)
    if path == "lean":
        dx, dgamma, dbeta = lean.backward(upstream, x, gamma, mean, var, spec)
    elif path == "small":
        dx, dgamma, dbeta = compiled.backward(np.ascontiguousarray(upstream), x,
                                              _small_param(gamma, layout), _flat64(mean),
                                              _flat64(var), spec.eps, layout.view, layout.rows)
    elif path == "rows":
        dx, dgamma, dbeta = compiled.row_backward_of(upstream, x, _per(gamma, layout),
                                                     _flat64(mean), _flat64(var), spec.eps,
                                                     layout, _threads_for(x))
    elif path == "blocked rows":
        dx, dgamma, dbeta = kernels.row_backward(upstream, x, _per(gamma, layout), _flat64(mean),
                                                 _flat64(var), spec.eps, layout)
    elif path == "columns":
        dx, dgamma, dbeta = compiled.column_backward(upstream, x, _flat64(gamma), _flat64(mean),
                                                     _flat64(var), spec.eps, layout,
                                                     _threads_for(x))
    else:
        dx, dgamma, dbeta = kernels.backward(upstream, x, _flat64(gamma), _flat64(mean),
                                             _flat64(var), spec.eps, layout)
    dtype = x.dtype
    return dx, dgamma.astype(dtype).reshape(gamma.shape), dbeta.astype(dtype).reshape(beta.shape)


def _threads_for(x: np.ndarray) -> int:
    return kernels.num_threads() if x.size >= PARALLEL_MIN_ELEMENTS else 1


def _flat64(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64).reshape(-1)


def _small_param(param: np.ndarray, layout: SmallLayout) -> np.ndarray:
    # gamma or beta flat (columns) or as (G, C) (rows), C-contiguous, in its own dtype.
    return np.ravel(param).reshape(layout.param_view)


def _per(param: np.ndarray, rows: kernels.RowLayout) -> np.ndarray:
    # gamma or beta as (G, C) float64: per value of a row for layer norm, per channel for group.
    return _flat64(param).reshape(rows.param_view)

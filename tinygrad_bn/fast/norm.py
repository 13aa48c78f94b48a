"""The fused normalization's fast path, registered on `FusedNorm` for numpy arrays.

Large batch norm whose layout the blocked passes take (see `kernels.layout_for`) runs
them (or their numba-compiled twins); every other first-order call runs `lean.py`, the
same closed form with fewer temporaries. Nodes (a VJP evaluated on Nodes) always get the
textbook functions of `norm/fused.py`.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

import numpy as np

from ..norm.fused import FusedNorm
from ..norm.spec import NormSpec
from . import kernels, lean
from .registry import fast_variant

__all__ = ["use_numba", "numba_enabled"]

_backend: ModuleType = kernels  # kernels, or numba_kernels after use_numba()


def use_numba(enabled: bool = True) -> None:
    """Run the large-input passes compiled with numba (an optional accelerator).

    The numpy block passes are the default. Raises ImportError, saying how to get numba,
    when it is not installed. TINYGRAD_BN_NUMBA=1 in the environment turns it on at import
    (with a warning instead of an error when numba is missing). A child process forked
    after the compiled passes ran on GNU OpenMP (which cannot run in such a child) uses
    the numpy passes.
    """
    global _backend
    if not enabled:
        _backend = kernels
        return
    try:
        from . import numba_kernels
    except ImportError as error:
        raise ImportError(f"use_numba: numba is not installed ({error}); "
                          f"`pip install numba` adds it, the numpy path works without") from None
    _backend = numba_kernels


def numba_enabled() -> bool:
    """Whether the compiled passes are in use."""
    return _backend is not kernels


def _after_fork_in_child() -> None:
    global _backend
    if _backend is not kernels and not _backend.fork_safe():
        _backend = kernels


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _layout(x: Any, spec: NormSpec) -> kernels.Layout | None:
    return None if spec.grouped_shape is not None else kernels.layout_for(x, spec.reduce_axes)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _is_array(x: Any, *args: Any, **params: Any) -> bool:
    return type(x) is np.ndarray and x.dtype in _FLOATS


@fast_variant(FusedNorm, "statistics", when=_is_array)
def fast_statistics(x: np.ndarray, spec: NormSpec) -> tuple[np.ndarray, np.ndarray]:
    layout = _layout(x, spec)
    if layout is None:
        return lean.statistics(x, spec)
    mean, var = _backend.statistics(x, layout)
    return mean.reshape(spec.param_bshape), var.reshape(spec.param_bshape)


@fast_variant(FusedNorm, "forward", when=_is_array)
def fast_forward(x, gamma, beta, *, spec, mean, var):
    layout = _layout(x, spec)
    if layout is None:
        return lean.normalize(x, gamma, beta, mean, var, spec)
    return _backend.normalize(x, _per_feature(gamma), _per_feature(beta), mean.reshape(-1),
                              var.reshape(-1), spec.eps, layout)


@fast_variant(FusedNorm, "backward", when=lambda upstream, x, *args, **params: _is_array(x))
def fast_backward(upstream, x, gamma, beta, out, *, spec, mean, var):
    layout = _layout(x, spec)
    if layout is None:
        dx, dgamma, dbeta = lean.backward(upstream, x, gamma, mean, var, spec)
    else:
        dx, dgamma, dbeta = _backend.backward(upstream, x, _per_feature(gamma), mean.reshape(-1),
                                              var.reshape(-1), spec.eps, layout)
    dtype = x.dtype
    return dx, dgamma.astype(dtype).reshape(gamma.shape), dbeta.astype(dtype).reshape(beta.shape)


def _per_feature(param: np.ndarray) -> np.ndarray:
    return param.reshape(-1).astype(np.float64)


if os.environ.get("TINYGRAD_BN_NUMBA") == "1":
    try:
        use_numba()
    except ImportError as error:
        warnings.warn(f"TINYGRAD_BN_NUMBA=1: {error}", RuntimeWarning, stacklevel=2)

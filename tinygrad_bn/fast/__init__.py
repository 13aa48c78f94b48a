"""The fast layer: faster variants of core functions, swapped in where they pay.

Importing it registers every variant (see `registry.py`); the core never imports it.

registry.py        how a variant takes a core function's place, and `disabled()`
alloc.py           malloc keeps freed large arrays for reuse (no page faults per step)
ops.py             op VJPs with fewer full-size temporaries (large arrays)
scalars.py         the backward loop for graphs of scalars, without the array machinery
norm.py            the fused normalization on large inputs (blocked or compiled passes)
kernels.py         blocked numpy passes, multi-threaded
numba_kernels.py   the same passes compiled with numba (optional)
"""

from . import alloc
from . import norm as _norm  # noqa: F401  (registers the fused-norm variants)
from . import ops as _ops  # noqa: F401  (registers the op variants)
from . import scalars as _scalars  # noqa: F401  (registers the scalar-graph backward)
from .kernels import num_threads, set_num_threads
from .norm import numba_enabled, use_numba
from .registry import VARIANTS, disabled, is_enabled

__all__ = ["alloc", "VARIANTS", "disabled", "is_enabled", "use_numba", "numba_enabled",
           "set_num_threads", "num_threads"]

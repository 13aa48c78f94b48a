"""The fast layer: faster variants of core functions, swapped in where they pay.

Importing it registers every variant on the seams the core declares (see `registry.py`);
the core never imports it. It changes nothing else in the process: `configure()` is the
one call that tunes it (malloc keeps freed large arrays for reuse), made by the command
line and the benchmarks, and by a library user who wants it.

registry.py        how a variant stands in at a declared seam, and `disabled()`
alloc.py           `configure()`: malloc keeps freed large arrays (no page faults per step)
ops.py             op VJPs with fewer full-size temporaries (large arrays)
steps.py           one node's backward step: no gradient for a parent that needs none
scalars.py         its rules for graphs of scalars, without the array machinery
norm.py            the fused normalization on large inputs (blocked or compiled passes)
kernels.py         blocked numpy passes, multi-threaded
numba_kernels.py   the same passes compiled with numba (optional)
"""

from . import alloc
from . import norm as _norm  # noqa: F401  (registers the fused-norm variants)
from . import ops as _ops  # noqa: F401  (registers the op variants)
from . import steps as _steps  # noqa: F401  (registers the backward pass's per-node step)
from .alloc import configure, release
from .kernels import num_threads, set_num_threads
from .norm import numba_enabled, use_numba
from .registry import VARIANTS, disabled, is_enabled

__all__ = ["alloc", "configure", "release", "VARIANTS", "disabled", "is_enabled", "use_numba",
           "numba_enabled", "set_num_threads", "num_threads"]

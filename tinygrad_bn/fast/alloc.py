"""Large temporaries without page faults: glibc's malloc asked to keep freed memory.

numpy takes array memory from malloc. glibc serves a large request (above its mmap
threshold, at most 32 MiB by default) with fresh pages from the kernel and unmaps them on
free, so every large temporary of every step is new memory whose pages fault on first
touch: for the staged graph at 4096x1024 float64 that is over a third of its time. Raising
the mmap and trim thresholds makes malloc serve such arrays from its heap and keep freed
ones there, so the next step reuses pages that are already mapped. Measured here at
4096x1024 float64, forward+backward: staged 59 -> 33 ms, fused 12.0 -> 9.6 ms.

The price is the process's footprint: it keeps up to `keep_bytes` of freed memory (by
default 1 GiB, and never more than its own peak) instead of returning it to the system.
That is a decision for the program, not for a library it imports: `import tinygrad_bn`
leaves malloc alone; the command line and the benchmarks call `configure()`, a library user
calls `tb.fast.configure()` once (a training script, say). `release()` returns the kept
memory now, `configure(0)` goes back to glibc's own thresholds. Other C libraries (musl,
macOS, Windows) are left alone: `configure` then returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["configure", "release", "DEFAULT_KEEP_BYTES"]

DEFAULT_KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_GLIBC_DEFAULT = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def configure(keep_bytes: int = DEFAULT_KEEP_BYTES) -> bool:
    """Let malloc keep up to `keep_bytes` of freed memory for reuse (0: glibc's defaults).

    Large temporaries then reuse pages already mapped instead of faulting in fresh ones
    (forward+backward of a large staged graph: about 1.8x faster here). Affects the whole
    process; nothing calls it on import. Returns True when the C library took the setting.
    """
    if isinstance(keep_bytes, bool) or not isinstance(keep_bytes, int) or keep_bytes < 0:
        raise ValueError(f"keep_bytes: expected an int >= 0, got {keep_bytes!r}")
    libc = _libc()
    if libc is None:
        return False
    threshold = max(min(keep_bytes, (1 << 31) - 1), _GLIBC_DEFAULT)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, threshold))


def release() -> bool:
    """Return the freed memory malloc keeps to the system now (glibc's malloc_trim)."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False

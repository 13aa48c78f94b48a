"""How long the first normalization of a fresh process takes with the compiled passes.

    python -m benchmarks.first_call

Runs each of the four normalizations once, forward and backward, in float32 and float64,
at a size the parallel passes take and at one the small inputs' single call takes, in fresh
processes: first with an empty numba cache (every pass compiled), then again with
the cache that run left (passes loaded from disk).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = """
import time
start = time.perf_counter()
import numpy as np, tinygrad_bn as tb
imported = time.perf_counter()
rng = np.random.default_rng(0)
cases = [("batch", (4096, 64), None), ("spatial", (16, 8, 32, 32), None),
         ("layer", (512, 256), None), ("group", (16, 8, 32, 32), 4),  # the parallel passes
         ("batch", (64, 64), None), ("spatial", (4, 8, 8, 8), None),  # one serial call each
         ("layer", (64, 64), None), ("group", (4, 8, 8, 8), 4)]
for dtype in (np.float32, np.float64):
    for kind, shape, groups in cases:
        x = tb.Node(rng.standard_normal(shape).astype(dtype))
        channels = shape[1] if kind != "layer" else shape[1]
        out = tb.norm_fused(kind, x, np.ones(channels, dtype), np.zeros(channels, dtype),
                            groups=groups)
        out.backward(np.ones(shape, dtype))
print(f"{imported - start:.2f} {time.perf_counter() - imported:.2f} {tb.fast.numba_enabled()}")
"""


def run(cache: str) -> tuple[float, float, bool]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                            env=env, check=True)
    imported, first, compiled = result.stdout.split()
    return float(imported), float(first), compiled == "True"


def main() -> int:
    with tempfile.TemporaryDirectory() as cache:
        cold = run(cache)
        warm = run(cache)
    print("| numba cache | import s | first forward+backward of all 16 cases, s |")
    print("|---|---:|---:|")
    print(f"| empty (compiles) | {cold[0]:.2f} | {cold[1]:.2f} |")
    print(f"| on disk | {warm[0]:.2f} | {warm[1]:.2f} |")
    if not cold[2]:
        print("(numba is not installed: the numpy passes ran)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

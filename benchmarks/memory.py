"""Peak memory of one forward+backward, measured in a fresh process with tracemalloc.

    python -m benchmarks.memory fused|staged|staged_free N,D [float64|float32]

Prints a JSON line: the peak bytes allocated above the inputs, and x's size. numpy reports
its array buffers to tracemalloc, so the peak counts every array the step allocates.
"""

from __future__ import annotations

import json
import sys
import tracemalloc

import numpy as np


def main() -> None:
    variant, shape_text = sys.argv[1], sys.argv[2]
    dtype = sys.argv[3] if len(sys.argv) > 3 else "float64"
    shape = tuple(int(s) for s in shape_text.split(","))
    import tinygrad_bn as tb

    rng = np.random.default_rng(0)
    x = tb.Node(rng.standard_normal(shape).astype(dtype), name="x")
    gamma = tb.Node(np.ones(shape[1], dtype), name="gamma")
    beta = tb.Node(np.zeros(shape[1], dtype), name="beta")
    dout = rng.standard_normal(shape).astype(dtype)
    fn = tb.batchnorm_fused if variant == "fused" else tb.batchnorm_staged
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = fn(x, gamma, beta)
    out.backward(dout, free_graph=variant == "staged_free")
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    print(json.dumps({"peak_bytes": peak, "x_bytes": x.data.nbytes}))


if __name__ == "__main__":
    main()

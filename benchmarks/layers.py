"""Convolution and max pooling, forward+backward: the staged graphs against plain numpy.

    python -m benchmarks.layers [--smoke] [--rounds R] [--no-loops]

Three ways to compute the same layer, each checked equal to the others before any timing:
- engine staged: `tinygrad_bn.cs231n`'s conv_forward_naive + conv_backward_naive (the staged
  graph: pad, sliding windows, one matrix product; its backward pass), max pooling likewise;
- numpy im2col: the same im2col written by hand in plain numpy (windows copied as rows, one
  matrix product, the gradient's windows added back by one strided add per window offset);
  pooling by numpy's reshape trick (windows that tile the input);
- naive loops: the assignment's loops over examples, filters and output positions.
The implementations alternate round by round; each figure is min / median of its rounds and
the ratios are of minima, measured in this one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

import tinygrad_bn as tb
from tinygrad_bn import cs231n

# The ConvolutionalNetworks notebook's shapes.
CONV_SHAPES = {"x": (50, 3, 32, 32), "w": (32, 3, 7, 7), "stride": 1, "pad": 3}
POOL_SHAPES = {"x": (100, 3, 32, 32), "size": 2, "stride": 2}
SMOKE_CONV = {"x": (2, 3, 8, 8), "w": (4, 3, 3, 3), "stride": 1, "pad": 1}
SMOKE_POOL = {"x": (2, 3, 8, 8), "size": 2, "stride": 2}


# --- convolution ------------------------------------------------------------------------
def conv_engine(x, w, b, dout, stride, pad):
    out, cache = cs231n.conv_forward_naive(x, w, b, {"stride": stride, "pad": pad})
    return (out, *cs231n.conv_backward_naive(dout, cache))


def conv_im2col(x, w, b, dout, stride, pad):
    n, c, _, _ = x.shape
    f, _, hh, ww = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(xpad, (hh, ww), axis=(2, 3))[:, :, ::stride, ::stride]
    out_h, out_w = windows.shape[2:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, c * hh * ww)
    wcols = w.reshape(f, -1)
    out = (cols @ wcols.T).reshape(n, out_h, out_w, f).transpose(0, 3, 1, 2) + b.reshape(1, f, 1, 1)
    dscores = dout.transpose(0, 2, 3, 1).reshape(-1, f)
    dw = (cols.T @ dscores).T.reshape(w.shape)  # (the faster order of the two products here)
    db = dout.sum(axis=(0, 2, 3))
    dcols = (dscores @ wcols).reshape(n, out_h, out_w, c, hh, ww).transpose(4, 5, 0, 3, 1, 2)
    dcols = np.ascontiguousarray(dcols)
    dxpad = np.zeros_like(xpad)
    for i in range(hh):
        for j in range(ww):
            dxpad[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride] += dcols[i, j]
    dx = dxpad[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]
    return out, dx, dw, db


def conv_loops(x, w, b, dout, stride, pad):
    n, _, height, width = x.shape
    f, _, hh, ww = w.shape
    out_h, out_w = 1 + (height + 2 * pad - hh) // stride, 1 + (width + 2 * pad - ww) // stride
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, f, out_h, out_w))
    for i in range(n):
        for k in range(f):
            for r in range(out_h):
                for s in range(out_w):
                    window = xpad[i, :, r * stride:r * stride + hh, s * stride:s * stride + ww]
                    out[i, k, r, s] = np.sum(window * w[k]) + b[k]
    dxpad, dw = np.zeros_like(xpad), np.zeros_like(w)
    for i in range(n):
        for k in range(f):
            for r in range(out_h):
                for s in range(out_w):
                    rows, columns = slice(r * stride, r * stride + hh), slice(s * stride, s * stride + ww)
                    dw[k] += xpad[i, :, rows, columns] * dout[i, k, r, s]
                    dxpad[i, :, rows, columns] += w[k] * dout[i, k, r, s]
    dx = dxpad[:, :, pad:pad + height, pad:pad + width]
    return out, dx, dw, dout.sum(axis=(0, 2, 3))


# --- max pooling ------------------------------------------------------------------------
def pool_engine(x, dout, size, stride):
    out, cache = cs231n.max_pool_forward_naive(x, {"pool_height": size, "pool_width": size,
                                                   "stride": stride})
    return out, cs231n.max_pool_backward_naive(dout, cache)


def pool_reshape(x, dout, size, stride):
    # numpy's reshape trick (windows that tile the input: stride == size), ties sharing.
    n, c, height, width = x.shape
    blocks = x.reshape(n, c, height // size, size, width // size, size)
    out = blocks.max(axis=(3, 5))
    hit = blocks == out[:, :, :, None, :, None]
    share = dout[:, :, :, None, :, None] / hit.sum(axis=(3, 5), keepdims=True)
    return out, (hit * share).reshape(x.shape)


def pool_loops(x, dout, size, stride):
    n, c, height, width = x.shape
    out_h, out_w = 1 + (height - size) // stride, 1 + (width - size) // stride
    out, dx = np.zeros((n, c, out_h, out_w)), np.zeros_like(x)
    for i in range(n):
        for k in range(c):
            for r in range(out_h):
                for s in range(out_w):
                    window = x[i, k, r * stride:r * stride + size, s * stride:s * stride + size]
                    out[i, k, r, s] = window.max()
                    hit = window == window.max()
                    dx[i, k, r * stride:r * stride + size, s * stride:s * stride + size] += \
                        hit * dout[i, k, r, s] / hit.sum()
    return out, dx


# --- timing ------------------------------------------------------------------------------
def time_alternating(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Each call once per round, in turn; the seconds of every round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def check_equal(results: dict[str, tuple[np.ndarray, ...]]) -> float:
    """The largest difference of any output from the first implementation's, relative to its
    size; raises if two implementations disagree."""
    reference = next(iter(results.values()))
    worst = 0.0
    for name, outputs in results.items():
        for ours, theirs in zip(outputs, reference):
            error = float(np.max(np.abs(ours - theirs)) / (np.max(np.abs(theirs)) + 1e-300))
            if error > 1e-10:
                raise AssertionError(f"{name} departs from the first implementation by {error:.3g}")
            worst = max(worst, error)
    return worst


def table(title: str, times: dict[str, list[float]], baseline: str) -> list[str]:
    best = {name: min(values) for name, values in times.items()}
    lines = [f"| {title} | min (ms) | median (ms) | rounds | vs {baseline} |", "|---|---|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {best[name] * 1e3:.1f} | {statistics.median(values) * 1e3:.1f} | "
                     f"{len(values)} | {best[name] / best[baseline]:.2f}x |")
    return lines


def run(smoke: bool = False, rounds: int = 5, loops: bool = True, loop_rounds: int = 1) -> str:
    """Time both layers; returns the report (markdown tables)."""
    rng = np.random.default_rng(0)
    conv = SMOKE_CONV if smoke else CONV_SHAPES
    x, w = rng.standard_normal(conv["x"]), rng.standard_normal(conv["w"])
    b = rng.standard_normal(conv["w"][0])
    stride, pad = conv["stride"], conv["pad"]
    out_hw = [1 + (size + 2 * pad - k) // stride for size, k in zip(conv["x"][2:], conv["w"][2:])]
    dout = rng.standard_normal((conv["x"][0], conv["w"][0], *out_hw))
    conv_calls = {"engine staged": lambda: conv_engine(x, w, b, dout, stride, pad),
                  "numpy im2col": lambda: conv_im2col(x, w, b, dout, stride, pad)}
    pool = SMOKE_POOL if smoke else POOL_SHAPES
    px = rng.standard_normal(pool["x"])
    size, pstride = pool["size"], pool["stride"]
    pout = [1 + (s - size) // pstride for s in pool["x"][2:]]
    pdout = rng.standard_normal((*pool["x"][:2], *pout))
    pool_calls = {"engine staged": lambda: pool_engine(px, pdout, size, pstride),
                  "numpy reshape": lambda: pool_reshape(px, pdout, size, pstride)}
    loop_calls = {"naive loops": lambda: conv_loops(x, w, b, dout, stride, pad)}
    pool_loop_calls = {"naive loops": lambda: pool_loops(px, pdout, size, pstride)}
    conv_error = check_equal({name: call() for name, call in
                              {**conv_calls, **(loop_calls if loops or smoke else {})}.items()})
    pool_error = check_equal({name: call() for name, call in
                              {**pool_calls, **(pool_loop_calls if loops or smoke else {})}.items()})
    conv_times = time_alternating(conv_calls, rounds)
    pool_times = time_alternating(pool_calls, rounds)
    if loops:
        conv_times.update(time_alternating(loop_calls, loop_rounds))
        pool_times.update(time_alternating(pool_loop_calls, loop_rounds))
    lines = [f"Forward+backward, float64. Machine: {platform.machine()}, {platform.python_version()}, "
             f"numpy {np.__version__}.", "",
             f"Convolution: x {conv['x']}, w {conv['w']}, stride {stride}, pad {pad} "
             f"(outputs agree within {conv_error:.1e})", ""]
    lines += table("conv", conv_times, "numpy im2col")
    lines += ["", f"Max pooling: x {pool['x']}, {size}x{size} windows, stride {pstride} "
                  f"(outputs agree within {pool_error:.1e})", ""]
    lines += table("max pool", pool_times, "numpy reshape")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one round (a test)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the staged and numpy versions")
    parser.add_argument("--no-loops", action="store_true", help="leave out the naive loops (slow)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: expected a positive number, got {args.rounds}")
    tb.fast.configure()
    print(run(smoke=args.smoke, rounds=1 if args.smoke else args.rounds, loops=not args.no_loops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

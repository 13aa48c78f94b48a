"""Convolution staged: xpad = pad(x); windows = the sliding windows of xpad with the stride;
out = the windows contracted with w, + b.

The contraction is one matrix product: `cols` (the windows as rows, im2col) @ `wcols`.T,
so its backward is two matrix products, and the windows' backward adds each window's
gradient back where it came from (overlapping windows add).
"""

from __future__ import annotations

from typing import Any

from ..core.functional import as_operand, pad, sliding_window_view
from ..core.node import Node
from .inputs import check_ndim, check_positive_int

__all__ = ["CONV_STAGES", "conv_staged", "conv_output_size"]

CONV_STAGES = ("xpad", "windows", "cols", "wcols", "scores", "conv", "out")


def conv_output_size(size: int, window: int, stride: int, padding: int, argname: str,
                     window_name: str) -> int:
    """(size + 2 * padding - window) / stride + 1, or an error naming `argname` when the
    window does not fit or the stride does not divide."""
    span = size + 2 * padding - window
    if span < 0:
        raise ValueError(f"{window_name}: a window of {window} does not fit an input of {size}"
                         f"{f' padded by {padding} on each side' if padding else ''}")
    if span % stride:
        raise ValueError(f"{argname}: expected a stride that divides {span} (input {size} + 2 * pad "
                         f"{padding} - window {window}), got {stride}")
    return span // stride + 1


def conv_staged(x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> dict[str, Node]:
    """x: (N, C, H, W), w: (F, C, HH, WW), b: (F,) -> the stage nodes by name;
    out: (N, F, H', W') with H' = 1 + (H + 2 * pad - HH) / stride (likewise W')."""
    x, w, b = as_operand(x, "x"), as_operand(w, "w"), as_operand(b, "b")
    check_ndim(x, 4, "(N, C, H, W)", "x")
    check_ndim(w, 4, "(F, C, HH, WW)", "w")
    stride = check_positive_int(stride, "stride")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"pad: expected a non-negative int, got {padding!r}")
    n, channels, height, width = x.shape
    filters, w_channels, hh, ww = w.shape
    if w_channels != channels:
        raise ValueError(f"w: expected {channels} channels (x's) in shape (F, C, HH, WW), got {w.shape}")
    if b.shape != (filters,):
        raise ValueError(f"b: expected shape ({filters},) (one per filter), got {b.shape}")
    out_h = conv_output_size(height, hh, stride, padding, "stride", "w")
    out_w = conv_output_size(width, ww, stride, padding, "stride", "w")
    p = padding
    xpad = pad(x, ((0, 0), (0, 0), (p, p), (p, p))).named("xpad")            # 1  zero border
    windows = sliding_window_view(xpad, (hh, ww), axis=(2, 3))              # 2  every window
    if stride > 1:
        windows = windows[:, :, ::stride, ::stride]                          #    at the stride
    windows = windows.named("windows")                    # (N, C, H', W', HH, WW)
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, channels * hh * ww) \
        .named("cols")                                                       # 3  windows as rows
    wcols = w.reshape(filters, channels * hh * ww).named("wcols")            # 4  filters as rows
    scores = (cols @ wcols.T).named("scores")                                # 5  the contraction
    conv = scores.reshape(n, out_h, out_w, filters).transpose(0, 3, 1, 2).named("conv")
    out = (conv + b.reshape(1, filters, 1, 1)).named("out")                  # 6  the bias
    return {"xpad": xpad, "windows": windows, "cols": cols, "wcols": wcols, "scores": scores,
            "conv": conv, "out": out}

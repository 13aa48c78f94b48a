"""Max pooling staged: windows = the sliding windows of x with the stride; out = the max
over each window's axes (elements tied for a window's max share its gradient evenly)."""

from __future__ import annotations

from typing import Any

from ..core.functional import as_operand, sliding_window_view
from ..core.node import Node
from .conv import conv_output_size
from .inputs import check_ndim, check_positive_int

__all__ = ["POOL_STAGES", "max_pool_staged"]

POOL_STAGES = ("windows", "out")


def max_pool_staged(x: Any, pool_height: int, pool_width: int, stride: int) -> dict[str, Node]:
    """x: (N, C, H, W) -> {"windows": (N, C, H', W', ph, pw), "out": (N, C, H', W')} with
    H' = 1 + (H - pool_height) / stride (likewise W')."""
    x = as_operand(x, "x")
    check_ndim(x, 4, "(N, C, H, W)", "x")
    pool_height = check_positive_int(pool_height, "pool_height")
    pool_width = check_positive_int(pool_width, "pool_width")
    stride = check_positive_int(stride, "stride")
    conv_output_size(x.shape[2], pool_height, stride, 0, "stride", "pool_height")
    conv_output_size(x.shape[3], pool_width, stride, 0, "stride", "pool_width")
    windows = sliding_window_view(x, (pool_height, pool_width), axis=(2, 3))
    if stride > 1:
        windows = windows[:, :, ::stride, ::stride]
    windows = windows.named("windows")
    out = windows.max(axis=(4, 5)).named("out")
    return {"windows": windows, "out": out}

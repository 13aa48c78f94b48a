"""conv_forward_naive / conv_backward_naive: x (N, C, H, W), w (F, C, HH, WW), b (F,),
conv_param {"stride", "pad"}; out (N, F, H', W'), H' = 1 + (H + 2 pad - HH) / stride."""

from __future__ import annotations

import numpy as np

from ...core.node import Node
from ...layers import conv_staged
from ..table import AssignmentFunction, Case, Seen, Slip
from .common import agrees, output
from .staged import rng_for, staged_grads, staged_out

# x shape, w shape, stride, pad: non-square images (H < W) and filters, strides 1 to 3, pad 0
# to 2, N = 1; every output size divides exactly. The notebook checks square inputs, pad 1.
CASES = [
    ((2, 3, 5, 5), (2, 3, 3, 3), 1, 1),    # the notebook's kind, first: a stride-1 baseline
    ((2, 3, 7, 9), (4, 3, 3, 5), 2, 1),    # non-square image and filter, stride 2
    ((1, 2, 5, 9), (3, 2, 3, 3), 1, 0),    # N = 1, pad 0, a 3 x 7 output
    ((2, 1, 8, 11), (2, 1, 2, 2), 3, 0),   # stride 3, a 3 x 4 output
    ((2, 2, 4, 6), (3, 2, 3, 4), 1, 2),    # pad 2, a 6 x 7 output
]


def cases(facts: dict) -> list[Case]:
    result = []
    for index, (xs, ws, stride, pad) in enumerate(CASES):
        rng = rng_for("conv", index)
        x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
        out_h = 1 + (xs[2] + 2 * pad - ws[2]) // stride
        out_w = 1 + (xs[3] + 2 * pad - ws[3]) // stride
        dout = rng_for("conv-dout", index).standard_normal((xs[0], ws[0], out_h, out_w))
        result.append(Case(f"x {xs}, w {ws}, stride {stride}, pad {pad}",
                           (x, w, b, {"stride": stride, "pad": pad}), dout,
                           {"stride": stride, "pad": pad, "out": (out_h, out_w)}))
    return result


def _options(case: Case) -> dict:
    return {"stride": case.facts["stride"], "padding": case.facts["pad"]}


def forward_reference(case: Case) -> tuple[np.ndarray, ...]:
    return (staged_out(conv_staged, case.args[:3], **_options(case)),)


def backward_reference(case: Case) -> tuple[np.ndarray, ...]:
    return staged_grads(conv_staged, case.args[:3], case.dout, **_options(case))


def windows(case: Case) -> np.ndarray:
    """Every correct window of the padded input, (count, C, HH, WW)."""
    x, w = case.args[0], case.args[1]
    pad, stride = case.facts["pad"], case.facts["stride"]
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    view = np.lib.stride_tricks.sliding_window_view(xpad, w.shape[2:], axis=(2, 3))
    view = view[:, :, ::stride, ::stride]
    return np.ascontiguousarray(view.transpose(0, 2, 3, 1, 4, 5)).reshape(-1, *w.shape[1:])


def _width_from_height(seen: Seen) -> bool:
    out, (x, w) = output(seen, 0), seen.case.args[:2]
    pad, stride = seen.case.facts["pad"], seen.case.facts["stride"]
    wrong = 1 + (x.shape[2] + 2 * pad - w.shape[3]) // stride
    return out is not None and wrong != seen.case.facts["out"][1] and \
        out.shape == (x.shape[0], w.shape[0], seen.case.facts["out"][0], wrong)


def _stride_ignored(seen: Seen) -> bool:
    stride = seen.case.facts["stride"]
    if stride == 1:
        return False
    x, w, b = seen.case.args[:3]
    full = staged_out(conv_staged, (x, w, b), stride=1, padding=seen.case.facts["pad"])
    out_h, out_w = seen.case.facts["out"]
    return agrees(output(seen, 0), full[:, :, :out_h, :out_w])


def _window_square(seen: Seen) -> bool:
    hh, ww = seen.case.args[1].shape[2:]
    return hh != ww and any(s.value.shape[-2:] == (hh, hh) and s.value.ndim >= 2
                            for s in seen.snapshots)


def _unpad_empty(seen: Seen) -> bool:
    dx = output(seen, 0)
    return seen.case.facts["pad"] == 0 and dx is not None and dx.size == 0


def _dw_assigned(seen: Seen) -> bool:
    x, w = seen.case.args[:2]
    pad, stride = seen.case.facts["pad"], seen.case.facts["stride"]
    out_h, out_w = seen.case.facts["out"]
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    i, j = (out_h - 1) * stride, (out_w - 1) * stride
    last = xpad[-1, :, i:i + w.shape[2], j:j + w.shape[3]]
    wrong = last[None] * seen.case.dout[-1, :, -1, -1][:, None, None, None]
    return agrees(output(seen, 1), wrong)


def staged(case: Case):
    leaves = [Node(a, name=n) for a, n in zip(case.args[:3], ("x", "w", "b"))]
    return conv_staged(*leaves, **_options(case))["out"], case.dout


ENTRIES = (
    AssignmentFunction(
        "conv_forward_naive", "forward", ("x", "w", "b", "conv_param"), ("out", "cache"), cases,
        forward_reference, part=windows,
        slips=(
            Slip("conv-width-from-height",
                 "The output width must use the input width W; using H is only right for "
                 "square images.", _width_from_height, locate="size"),
            Slip("conv-stride-ignored",
                 "Output pixel (i, j) reads the window starting at (i * stride, j * stride); "
                 "without the stride it is only right for stride 1.", _stride_ignored,
                 locate="part"),
            Slip("conv-window-square",
                 "The window is HH rows by WW columns; slicing HH columns only matches the "
                 "filter when it is square.", _window_square, locate="part"),
        ),
        about="the naive convolution, any stride and pad"),
    AssignmentFunction(
        "conv_backward_naive", "backward", ("dout", "cache"), ("dx", "dw", "db"), cases,
        backward_reference, forward="conv_forward_naive",
        staged=staged,
        slips=(
            Slip("conv-unpad-negative",
                 "With pad = 0 the slice pad:-pad is 0:0, which is empty; slice pad:pad + H and "
                 "pad:pad + W instead.", _unpad_empty, output=0),
            Slip("conv-dw-assign",
                 "Each filter weight is used at every output position of every image, so its "
                 "gradient is the sum of all those contributions; '=' keeps only the last one.",
                 _dw_assigned, output=1),
        ),
        about="dx, dw, db from the student's own cache"),
)

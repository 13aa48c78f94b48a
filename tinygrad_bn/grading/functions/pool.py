"""max_pool_forward_naive / max_pool_backward_naive: x (N, C, H, W), pool_param
{"pool_height", "pool_width", "stride"}; out (N, C, H', W'), H' = 1 + (H - ph) / stride.
Ties: a window's gradient may go to any one of its maxima or be split evenly among them."""

from __future__ import annotations

import numpy as np

from ...core.node import Node
from ...layers import max_pool_staged
from ..table import AssignmentFunction, Case, Seen, Slip
from .common import FLOAT32_TOLERANCE, agrees, output
from .staged import rng_for, staged_grads, staged_out

# x shape, pool height, pool width, stride: the notebook's 2 x 2 / 2 first, then overlapping
# windows, a non-square window, gaps between windows, N = 1.
CASES = [
    ((2, 3, 4, 4), 2, 2, 2),
    ((1, 2, 5, 7), 3, 3, 1),
    ((2, 2, 7, 6), 3, 2, 2),
    ((2, 1, 5, 9), 2, 3, 3),
]
TIES = ((2, 2, 4, 6), 2, 2, 2)  # small integers: windows with tied maxima


def _case(label: str, x: np.ndarray, ph: int, pw: int, stride: int, dout_seed: int,
          ties: bool = False) -> Case:
    out = (1 + (x.shape[2] - ph) // stride, 1 + (x.shape[3] - pw) // stride)
    dout = rng_for("pool-dout", dout_seed).standard_normal(x.shape[:2] + out)
    return Case(label, (x, {"pool_height": ph, "pool_width": pw, "stride": stride}), dout,
                {"ph": ph, "pw": pw, "stride": stride, "out": out, "ties": ties})


def cases(facts: dict) -> list[Case]:
    result = [_case(f"x {xs}, {ph} x {pw} pool, stride {stride}",
                    rng_for("pool", index).standard_normal(xs), ph, pw, stride, index)
              for index, (xs, ph, pw, stride) in enumerate(CASES)]
    xs, ph, pw, stride = TIES
    x = rng_for("pool-ties", 0).integers(0, 3, xs).astype(np.float64)
    result.append(_case(f"x {xs} of small integers (tied maxima), {ph} x {pw} pool, stride "
                        f"{stride}", x, ph, pw, stride, 99, ties=True))
    return result


def _sizes(case: Case) -> tuple[int, int, int]:
    return case.facts["ph"], case.facts["pw"], case.facts["stride"]


def forward_reference(case: Case) -> tuple[np.ndarray, ...]:
    return (staged_out(lambda x: max_pool_staged(x, *_sizes(case)), case.args[:1]),)


def backward_reference(case: Case) -> tuple[np.ndarray, ...]:
    return staged_grads(lambda x: max_pool_staged(x, *_sizes(case)), case.args[:1], case.dout)


def _windows(case: Case):
    ph, pw, stride = _sizes(case)
    out_h, out_w = case.facts["out"]
    x = case.args[0]
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i in range(out_h):
                for j in range(out_w):
                    rows = slice(i * stride, i * stride + ph)
                    cols = slice(j * stride, j * stride + pw)
                    yield (n, c, rows, cols), x[n, c, rows, cols], case.dout[n, c, i, j]


def judge_backward_case(seen: Seen) -> str | None:
    """Exact gradient off ties; on tied maxima any one maximum or an even split passes."""
    dx = output(seen, 0)
    if dx is None:
        return "dx is missing"
    x = seen.case.args[0]
    if not seen.case.facts["ties"]:
        return None if agrees(dx, seen.expected[0]) else "dx differs from the staged graph's"
    if dx.shape != x.shape:
        return f"dx has shape {dx.shape}, expected x's shape {x.shape}"
    close = FLOAT32_TOLERANCE if dx.dtype == np.float32 else 1e-12
    for (n, c, rows, cols), window, d in _windows(seen.case):
        grad = np.asarray(dx[n, c, rows, cols], dtype=np.float64)
        top = window == window.max()
        limit = close * max(1.0, abs(d))
        if np.any(np.abs(grad[~top]) > limit):
            return "on tied inputs, gradient reaches an entry that is not its window's maximum"
        tied = grad[top]
        one = np.count_nonzero(np.abs(tied) > limit) <= 1 and abs(tied.sum() - d) <= limit
        split = bool(np.all(np.abs(tied - d / top.sum()) <= limit))
        if not (one or split):
            return (f"a window with {int(top.sum())} tied maxima passes on {tied.sum() / d:.3g} "
                    f"times its gradient (one maximum or an even split is right)")
    return None


def _assigned_at_argmax(case: Case) -> np.ndarray:
    dx = np.zeros_like(case.args[0])
    for (n, c, rows, cols), window, d in _windows(case):
        r, s = np.unravel_index(np.argmax(window), window.shape)
        dx[n, c, rows.start + r, cols.start + s] = d
    return dx


def _assigned_window(case: Case) -> np.ndarray:
    dx = np.zeros_like(case.args[0])
    for (n, c, rows, cols), window, d in _windows(case):
        dx[n, c, rows, cols] = (window == window.max()) * d
    return dx


def _ties_duplicated(case: Case) -> np.ndarray:
    dx = np.zeros_like(case.args[0])
    for (n, c, rows, cols), window, d in _windows(case):
        dx[n, c, rows, cols] += (window == window.max()) * d
    return dx


def _variant(make):
    def matches(seen: Seen) -> bool:
        dx = output(seen, 0)
        return dx is not None and not agrees(dx, seen.expected[0]) and agrees(dx, make(seen.case))
    return matches


def _width_from_height(seen: Seen) -> bool:
    out, x = output(seen, 0), seen.case.args[0]
    ph, pw, stride = _sizes(seen.case)
    wrong = 1 + (x.shape[3] - ph) // stride
    return out is not None and wrong != seen.case.facts["out"][1] and \
        out.shape == x.shape[:2] + (seen.case.facts["out"][0], wrong)


def _swapped(seen: Seen) -> bool:
    out_h, out_w = seen.case.facts["out"]
    shape = seen.case.args[0].shape[:2] + (out_w, out_h)
    out = output(seen, 0)
    return out_h != out_w and ((out is not None and out.shape == shape) or (
        seen.error is not None and any(s.value.shape == shape for s in seen.snapshots)))


def staged(case: Case):
    return max_pool_staged(Node(case.args[0], name="x"), *_sizes(case))["out"], case.dout


ENTRIES = (
    AssignmentFunction(
        "max_pool_forward_naive", "forward", ("x", "pool_param"), ("out", "cache"), cases,
        forward_reference,
        slips=(
            Slip("pool-width-from-height",
                 "The output width must use pool_width; using pool_height is only right for "
                 "square pools.", _width_from_height, locate="size"),
            Slip("pool-shape-swapped",
                 "The output is (N, C, H_out, W_out); with the two swapped it only works when "
                 "the output is square.", _swapped, locate="creation"),
        ),
        about="the max over each window, any window and stride"),
    AssignmentFunction(
        "max_pool_backward_naive", "backward", ("dout", "cache"), ("dx",), cases,
        backward_reference, forward="max_pool_forward_naive", judge_case=judge_backward_case,
        staged=staged,
        slips=(
            Slip("pool-assign-overlap",
                 "When pooling windows overlap, one input can be the maximum of several windows "
                 "and must receive the sum of their upstream gradients; '=' keeps only the last.",
                 _variant(_assigned_at_argmax)),
            Slip("pool-ties-duplicated",
                 "When several entries of a window tie for the maximum, the window's gradient "
                 "must go to one of them or be split evenly; the equality mask gives each of "
                 "them all of it.", _variant(_ties_duplicated)),
            Slip("pool-assign-window",
                 "Writing the whole window with '=' puts zeros over the gradients an earlier "
                 "overlapping window gave to its maximum; add the gradient at the maximum "
                 "instead.", _variant(_assigned_window)),
        ),
        about="dx from the student's own cache; tied maxima: one of them or an even split"),
)

"""svm_loss / softmax_loss: scores x (N, C), labels y (N,) -> (loss, dx), each the mean over
the N samples. Scores shifted by 1000 expose a softmax without the max shift."""

from __future__ import annotations

import numpy as np

from ...core.node import Node
from ...layers import softmax_staged, svm_staged
from ..table import AssignmentFunction, Case, Seen, Slip
from .common import agrees, output
from .staged import rng_for, staged_grads

CASES = [(1, 5, 0.0), (6, 4, 0.0), (5, 7, 1000.0)]  # N, classes, shift of every score


def _cases(name: str):
    def cases(facts: dict) -> list[Case]:
        result = []
        for index, (n, classes, shift) in enumerate(CASES):
            rng = rng_for(name, index)
            x = rng.standard_normal((n, classes)) + shift
            y = rng.integers(0, classes, n)
            result.append(Case(f"N = {n}, {classes} classes, scores near {shift:g}", (x, y),
                               None, {"n": n, "shift": shift}))
        return result
    return cases


def _reference(stages):
    def reference(case: Case) -> tuple[np.ndarray, ...]:
        x, y = case.args
        loss = stages(_leaf(x), y)["loss"]
        return (np.asarray(loss.data, dtype=np.float64).reshape(()),
                staged_grads(lambda node: stages(node, y), (x,), None, key="loss")[0])
    return reference


def _leaf(x: np.ndarray) -> Node:
    return Node(np.asarray(x, dtype=np.float64))


def _loss_times(factor_of, extra_of=lambda case: 0.0):
    def matches(seen: Seen) -> bool:
        loss = output(seen, 0)
        if loss is None or loss.size != 1:
            return False
        right = seen.expected[0] * factor_of(seen.case) + extra_of(seen.case)
        return not agrees(loss.reshape(()), seen.expected[0]) and agrees(loss.reshape(()), right)
    return matches


def _dx_times_n(seen: Seen) -> bool:
    return seen.case.facts["n"] > 1 and agrees(output(seen, 1), seen.expected[1] * seen.case.facts["n"])


def _overflow(seen: Seen) -> bool:
    loss = output(seen, 0)
    return seen.case.facts["shift"] > 100 and loss is not None and not np.all(np.isfinite(loss))


def _staged(stages):
    def staged(case: Case):
        return stages(Node(case.args[0], name="x"), case.args[1])["loss"], None
    return staged


ENTRIES = (
    AssignmentFunction(
        "svm_loss", "loss", ("x", "y"), ("loss", "dx"), _cases("svm_loss"), _reference(svm_staged),
        staged=_staged(svm_staged),
        slips=(
            Slip("svm-loss-not-averaged",
                 "The data loss is the mean over the N samples; without dividing by N it is N "
                 "times too large.", _loss_times(lambda case: case.facts["n"]), output=0),
            Slip("svm-correct-class-counted",
                 "The margin of the correct class against itself is always 1 and must be "
                 "excluded (set to zero) before summing; here it adds 1 to the loss.",
                 _loss_times(lambda case: 1.0, lambda case: 1.0), output=0),
        ),
        about="multiclass SVM loss (margin 1) and its gradient"),
    AssignmentFunction(
        "softmax_loss", "loss", ("x", "y"), ("loss", "dx"), _cases("softmax_loss"),
        _reference(softmax_staged), staged=_staged(softmax_staged),
        slips=(
            Slip("softmax-no-shift",
                 "exp(1000) overflows to inf; subtracting each row's maximum first leaves the "
                 "loss unchanged and keeps exp finite.", _overflow, locate="nonfinite"),
            Slip("softmax-dx-not-averaged",
                 "The loss is the mean over the N samples, so each sample's gradient is divided "
                 "by N as well.", _dx_times_n, output=1),
        ),
        about="softmax (cross-entropy) loss and its gradient"),
)

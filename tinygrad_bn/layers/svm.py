"""Multiclass SVM loss staged: correct = x[rows, y]; margins = relu(x - correct + 1) times
`others` (0 at the correct class, 1 elsewhere); loss = the mean over N of each row's summed margins."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.functional import as_operand
from ..core.node import Node
from .inputs import check_labels, check_ndim

__all__ = ["SVM_STAGES", "svm_staged", "svm_closed_form"]

SVM_STAGES = ("correct", "diffs", "margins", "losses", "loss")


def svm_staged(x: Any, y: Any) -> dict[str, Node]:
    """x: (N, C) scores, y: (N,) labels in [0, C) -> the stage nodes by name; loss: a scalar."""
    x = as_operand(x, "x")
    check_ndim(x, 2, "(N, C)", "x")
    labels = check_labels(y, x)
    n = x.shape[0]
    rows = np.arange(n)
    others = np.ones(x.shape, dtype=x.dtype)  # 1 off the correct class, 0 on it
    others[rows, labels] = 0
    others = Node(others, name="others", requires_grad=False)
    correct = x[rows, labels].named("correct")                        # 1  the correct class's score
    diffs = (x - correct.reshape(n, 1) + 1).named("diffs")            # 2  each class's margin
    margins = (diffs.relu() * others).named("margins")               # 3  hinge, off the correct class
    losses = margins.sum(axis=1).named("losses")                      # 4  each example's loss
    loss = losses.mean().named("loss")                                # 5  mean over N
    return {"correct": correct, "diffs": diffs, "margins": margins, "losses": losses, "loss": loss}


def svm_closed_form(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The assignment's vectorized loss and gradient: (loss, dx)."""
    n = x.shape[0]
    rows = np.arange(n)
    margins = np.maximum(0, x - x[rows, y][:, None] + 1)
    margins[rows, y] = 0
    positive = (margins > 0).astype(x.dtype)
    positive[rows, y] = -positive.sum(axis=1)
    return margins.sum() / n, positive / n

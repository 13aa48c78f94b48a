"""Softmax (cross-entropy) loss staged: shifted = x - max; log-sum-exp; the correct class's
log-probability picked by indexing; loss = minus its mean over N."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.functional import as_operand
from ..core.node import Node
from .inputs import check_labels, check_ndim

__all__ = ["SOFTMAX_STAGES", "softmax_staged", "softmax_closed_form"]

SOFTMAX_STAGES = ("xmax", "shifted", "exps", "sums", "log_sums", "log_probs", "picked", "loss")


def softmax_staged(x: Any, y: Any) -> dict[str, Node]:
    """x: (N, C) scores, y: (N,) labels in [0, C) -> the stage nodes by name; loss: a scalar."""
    x = as_operand(x, "x")
    check_ndim(x, 2, "(N, C)", "x")
    labels = check_labels(y, x)
    rows = np.arange(x.shape[0])
    xmax = x.max(axis=1, keepdims=True).named("xmax")                  # 1  each row's max
    shifted = (x - xmax).named("shifted")                              # 2  no exp overflows
    exps = shifted.exp().named("exps")                                 # 3
    sums = exps.sum(axis=1, keepdims=True).named("sums")               # 4
    log_sums = sums.log().named("log_sums")                            # 5  log-sum-exp
    log_probs = (shifted - log_sums).named("log_probs")                # 6  log-softmax
    picked = log_probs[rows, labels].named("picked")                   # 7  the correct class's
    loss = (-picked.mean()).named("loss")                              # 8  mean over N
    return {"xmax": xmax, "shifted": shifted, "exps": exps, "sums": sums, "log_sums": log_sums,
            "log_probs": log_probs, "picked": picked, "loss": loss}


def softmax_closed_form(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The assignment's vectorized loss and gradient: (loss, dx = (softmax - onehot) / N)."""
    n = x.shape[0]
    shifted = x - x.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    dx = np.exp(log_probs)
    dx[np.arange(n), y] -= 1
    return -log_probs[np.arange(n), y].mean(), dx / n

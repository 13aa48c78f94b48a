"""Softmax cross-entropy: one op with the classic (probs - onehot) / N backward."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.node import Node, apply
from ..core.ops import Op, exp_of, value

__all__ = ["softmax_cross_entropy"]


class SoftmaxCrossEntropy(Op):
    """Mean over the batch of -log softmax(logits)[label]."""

    name = "softmax_xent"
    formula = ("d/d{0} = (softmax({0}) - onehot(labels)) / N",)
    domain = ("real",)

    @staticmethod
    def forward(logits, *, labels):
        log_probs = _log_softmax(logits)
        return -log_probs[np.arange(len(labels)), labels].mean()

    @staticmethod
    def backward(upstream, logits, out, *, labels):
        # softmax(logits) - onehot(labels), over N. Shifting by the (constant) row maximum
        # keeps exp finite and changes nothing: written so that it also runs on Nodes.
        exp = exp_of(logits - value(logits).max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        onehot = np.zeros(logits.shape, logits.dtype)
        onehot[np.arange(len(labels)), labels] = 1
        return ((probs - onehot) * (upstream / len(labels)),)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    # Shifting by the row maximum changes nothing mathematically and keeps exp finite.
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits: Node, labels: Any) -> Node:
    """Mean cross-entropy loss. logits: (N, K) Node; labels: (N,) ints in [0, K). Returns a 0-d Node."""
    if not isinstance(logits, Node) or logits.ndim != 2:
        shape = getattr(logits, "shape", None)
        raise ValueError(f"logits: expected a Node of shape (N, K), got {type(logits).__name__} "
                         f"of shape {shape}")
    labels = np.asarray(labels)
    n, k = logits.shape
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise ValueError(f"labels: expected {n} integers (shape ({n},)), got dtype {labels.dtype} "
                         f"and shape {labels.shape}")
    if n == 0:
        raise ValueError("logits: expected at least one row, got an empty batch")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels: expected values in [0, {k}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    return apply(SoftmaxCrossEntropy, (logits,), labels=labels)

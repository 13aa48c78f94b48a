"""The staged layers' arguments checked where they enter: inputs as Nodes, labels, sizes.

Each check raises a one-line error naming the argument, what was expected and what was given.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..core.node import Node

__all__ = ["check_labels", "check_positive_int", "check_ndim"]


def check_ndim(node: Node, ndim: int, layout: str, argname: str) -> None:
    if node.ndim != ndim:
        raise ValueError(f"{argname}: expected shape {layout}, got {node.shape}")


def check_labels(y: Any, scores: Node, argname: str = "y") -> np.ndarray:
    """y: (N,) integer class labels in [0, C) for scores of shape (N, C)."""
    labels = np.asarray(y)
    n, classes = scores.shape
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and labels.size
                                             and np.all(labels == np.round(labels))):
        raise TypeError(f"{argname}: expected integer class labels, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{argname}: expected shape ({n},) (one label per row of x), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{argname}: expected labels in [0, {classes}) for x with {classes} classes, "
                         f"got values from {labels.min()} to {labels.max()}")
    return labels.astype(np.intp)


def check_positive_int(value: Any, argname: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{argname}: expected a positive int, got {value!r}")
    return int(value)

"""Affine (fully connected) layer staged: rows = x.reshape(N, D); scores = rows @ w;
out = scores + b. The closed-form backward is the assignment's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core.functional import as_operand
from ..core.node import Node

__all__ = ["AFFINE_STAGES", "affine_staged", "affine_closed_form_backward"]

AFFINE_STAGES = ("rows", "scores", "out")


def affine_staged(x: Any, w: Any, b: Any) -> dict[str, Node]:
    """x: (N, d_1, ..., d_k), w: (D, M) with D = d_1 * ... * d_k, b: (M,) -> the stage nodes
    by name; out: (N, M)."""
    x, w, b = as_operand(x, "x"), as_operand(w, "w"), as_operand(b, "b")
    if x.ndim < 1:
        raise ValueError(f"x: expected shape (N, d_1, ..., d_k), got {x.shape}")
    n, d = x.shape[0], math.prod(x.shape[1:])
    if w.ndim != 2 or w.shape[0] != d:
        raise ValueError(f"w: expected shape ({d}, M) for x of shape {x.shape}, got {w.shape}")
    if b.shape != (w.shape[1],):
        raise ValueError(f"b: expected shape ({w.shape[1]},) (w's columns), got {b.shape}")
    rows = x.reshape(n, d).named("rows")       # 1  each example as a row
    scores = (rows @ w).named("scores")         # 2  the products
    out = (scores + b).named("out")             # 3  the bias
    return {"rows": rows, "scores": scores, "out": out}


def affine_closed_form_backward(dout: np.ndarray, x: np.ndarray, w: np.ndarray
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The assignment's formulas: dx = dout @ w.T (in x's shape), dw = rows.T @ dout, db = sum."""
    rows = x.reshape(x.shape[0], -1)
    return (dout @ w.T).reshape(x.shape), rows.T @ dout, dout.sum(axis=0)

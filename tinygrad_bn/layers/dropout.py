"""Inverted dropout staged, with its mask given: out = x * mask, where mask holds 1/p for a
kept unit and 0 for a dropped one (p the keep probability), so test time needs no scaling."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.functional import as_operand
from ..core.node import Node

__all__ = ["DROPOUT_STAGES", "dropout_staged", "dropout_mask", "dropout_closed_form_backward"]

DROPOUT_STAGES = ("mask", "out")


def dropout_mask(shape: tuple[int, ...], keep: float, uniform: np.ndarray, dtype: Any) -> np.ndarray:
    """The inverted-dropout mask: (uniform < keep) / keep, from uniform draws in [0, 1)."""
    return ((uniform < keep) / keep).astype(dtype)


def dropout_staged(x: Any, mask: Any) -> dict[str, Node]:
    """x: any shape; mask: x's shape (constant, no gradient) -> {"mask", "out": x * mask}."""
    x = as_operand(x, "x")
    mask = Node(np.asarray(as_operand(mask, "mask").data, dtype=x.dtype), name="mask",
                requires_grad=False)
    if mask.shape != x.shape:
        raise ValueError(f"mask: expected x's shape {x.shape}, got {mask.shape}")
    return {"mask": mask, "out": (x * mask).named("out")}


def dropout_closed_form_backward(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The assignment's formula: dx = dout * mask."""
    return dout * mask

"""ReLU staged: out = max(x, 0), one node. Its closed form: dout where x > 0, else 0."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.functional import as_operand
from ..core.node import Node

__all__ = ["RELU_STAGES", "relu_staged", "relu_closed_form_backward"]

RELU_STAGES = ("out",)


def relu_staged(x: Any) -> dict[str, Node]:
    """x: any shape -> {"out": relu(x)} (the derivative at 0 taken as 0, as the assignment's)."""
    x = as_operand(x, "x")
    return {"out": x.relu().named("out")}


def relu_closed_form_backward(dout: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The assignment's formula: dx = dout * (x > 0)."""
    return np.where(x > 0, dout, 0).astype(dout.dtype, copy=False)

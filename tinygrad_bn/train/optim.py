"""Optimizers: plain SGD (with optional momentum) and Adam.

A step gives each parameter a new array (`Node.assign`) rather than writing into the old one:
an array a user passed to Node() keeps its values, and a graph built before the step refuses
to backpropagate instead of silently using the stepped values.

A step is all or nothing: every parameter and gradient is checked, and every new value and
new optimizer state computed, before the first parameter changes. The optimizer's state (a
velocity, Adam's moments) follows each parameter's dtype when it is used: a module that
turns float32 at its first input takes the state of an optimizer made before it along.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..core.node import Node

__all__ = ["Optimizer", "SGD", "Adam"]


def _positive(value: Any, argname: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not (math.isfinite(value) and value > 0)):
        raise ValueError(f"{argname}: expected a finite number > 0, got {value!r}")
    return float(value)


def _fraction(value: Any, argname: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{argname}: expected a number in [0, 1), got {value!r}")
    return float(value)


def _like(state: np.ndarray, parameter: Node) -> np.ndarray:
    # The state in the parameter's current dtype (a copy: the old state stays untouched
    # until the whole step has been computed).
    return state.astype(parameter.data.dtype)


class Optimizer:
    """Holds the parameters; `step()` applies their gradients, `zero_grad()` clears them.

    params: leaf Nodes (parameters), each once.
    """

    def __init__(self, params: Iterable[Node]) -> None:
        self.params = list(params)
        first_seen: dict[int, int] = {}
        for i, p in enumerate(self.params):
            if not isinstance(p, Node):
                raise TypeError(f"params[{i}]: expected a Node, got {type(p).__name__}")
            if p.op is not None:
                raise ValueError(f"params[{i}]: expected a leaf Node (a parameter), got the "
                                 f"result of {p.op!r}; an optimizer steps leaves only")
            if id(p) in first_seen:
                raise ValueError(f"params[{i}]: the same parameter as params[{first_seen[id(p)]}]; "
                                 f"each parameter may appear once (one step per update)")
            first_seen[id(p)] = i

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _gradients(self) -> list[np.ndarray | None]:
        """Each parameter's gradient in its dtype (None: no gradient, skipped), all checked
        before any is used. Non-finite gradients are not refused: a diverging run (the
        experiment shows some) is the caller's to watch."""
        gradients: list[np.ndarray | None] = []
        for i, p in enumerate(self.params):
            where = f"params[{i}]" + (f" ({p.name!r})" if p.name else "")
            if p.op is not None:  # a leaf cannot become an op's result, but say it plainly
                raise ValueError(f"{where}: expected a leaf Node (a parameter), got the result "
                                 f"of {p.op!r}")
            if p.grad is None:
                gradients.append(None)
                continue
            grad = np.asarray(p.grad)
            if grad.shape != p.data.shape:
                raise ValueError(f"{where}: expected a gradient of shape {p.data.shape}, got "
                                 f"shape {grad.shape}")
            gradients.append(grad.astype(p.data.dtype, copy=False))
        return gradients

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """p -= lr * v with v = momentum * v + grad (momentum 0: plain gradient descent)."""

    def __init__(self, params: Iterable[Node], lr: float = 1e-2, momentum: float = 0.0) -> None:
        super().__init__(params)
        self.lr = _positive(lr, "lr")
        self.momentum = _fraction(momentum, "momentum")
        self.velocity = [np.zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        """Update every parameter that has a gradient; nothing changes if any check fails."""
        gradients = self._gradients()
        updates = []
        for index, (p, grad) in enumerate(zip(self.params, gradients)):
            if grad is None:
                continue
            v = self.momentum * _like(self.velocity[index], p) + grad
            updates.append((index, p, v, p.data - self.lr * v))
        for index, p, v, new in updates:
            self.velocity[index] = v
            p.assign(new)


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction."""

    def __init__(self, params: Iterable[Node], lr: float = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(params)
        self.lr = _positive(lr, "lr")
        self.beta1 = _fraction(beta1, "beta1")
        self.beta2 = _fraction(beta2, "beta2")
        self.eps = _positive(eps, "eps")
        self.t = 0
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        """Update every parameter that has a gradient; nothing changes if any check fails."""
        gradients = self._gradients()
        t = self.t + 1
        correction1 = 1 - self.beta1 ** t
        correction2 = 1 - self.beta2 ** t
        updates = []
        for index, (p, grad) in enumerate(zip(self.params, gradients)):
            if grad is None:
                continue
            m = self.beta1 * _like(self.m[index], p) + (1 - self.beta1) * grad
            v = self.beta2 * _like(self.v[index], p) + (1 - self.beta2) * (grad * grad)
            new = p.data - self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)
            updates.append((index, p, m, v, new))
        self.t = t
        for index, p, m, v, new in updates:
            self.m[index], self.v[index] = m, v
            p.assign(new)

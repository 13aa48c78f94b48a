"""Optimizers: plain SGD (with optional momentum) and Adam.

A step gives each parameter a new array (`Node.assign`) rather than writing into the old one:
an array a user passed to Node() keeps its values, and a graph built before the step refuses
to backpropagate instead of silently using the stepped values.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..core.node import Node

__all__ = ["Optimizer", "SGD", "Adam"]


def _positive(value: Any, argname: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{argname}: expected a number > 0, got {value!r}")
    return float(value)


def _fraction(value: Any, argname: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{argname}: expected a number in [0, 1), got {value!r}")
    return float(value)


class Optimizer:
    """Holds the parameters; `step()` applies their gradients, `zero_grad()` clears them."""

    def __init__(self, params: Iterable[Node]) -> None:
        self.params = list(params)
        first_seen: dict[int, int] = {}
        for i, p in enumerate(self.params):
            if not isinstance(p, Node):
                raise TypeError(f"params[{i}]: expected a Node, got {type(p).__name__}")
            if id(p) in first_seen:
                raise ValueError(f"params[{i}]: the same parameter as params[{first_seen[id(p)]}]; "
                                 f"each parameter may appear once (one step per update)")
            first_seen[id(p)] = i

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

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
        for p, v in zip(self.params, self.velocity):
            if p.grad is None:
                continue
            v *= self.momentum
            v += p.grad
            p.assign(p.data - self.lr * v)


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
        self.t += 1
        correction1 = 1 - self.beta1 ** self.t
        correction2 = 1 - self.beta2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m *= self.beta1
            m += (1 - self.beta1) * p.grad
            v *= self.beta2
            v += (1 - self.beta2) * p.grad * p.grad
            p.assign(p.data - self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps))

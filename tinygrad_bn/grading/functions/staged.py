"""The staged graphs run for the checker: outputs and gradients in float64."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...core.node import Node

__all__ = ["staged_out", "staged_grads", "rng_for"]


def rng_for(name: str, case: int) -> np.random.Generator:
    """The generator of one case: the same numbers in the box and in the checker."""
    return np.random.default_rng([sum(map(ord, name)), case])


def staged_out(stages: Callable[..., dict[str, Node]], inputs: tuple[np.ndarray, ...],
               key: str = "out", **options: Any) -> np.ndarray:
    nodes = stages(*[Node(np.asarray(a, dtype=np.float64)) for a in inputs], **options)
    return np.asarray(nodes[key].data, dtype=np.float64)


def staged_grads(stages: Callable[..., dict[str, Node]], inputs: tuple[np.ndarray, ...],
                 dout: np.ndarray | None, key: str = "out", extra: tuple[Any, ...] = (),
                 **options: Any) -> tuple[np.ndarray, ...]:
    """The gradient of <key, dout> (of key itself when dout is None) for each input."""
    leaves = [Node(np.asarray(a, dtype=np.float64).copy()) for a in inputs]
    out = stages(*leaves, *extra, **options)[key]
    out.backward(None if dout is None else np.asarray(dout, dtype=np.float64))
    return tuple(np.asarray(leaf.grad, dtype=np.float64).copy() for leaf in leaves)

"""Where a gradient comes from: the parts that add up to it, and the sums over broadcast axes.

Two places of the batch-norm backward are where students slip, and both are about how a
gradient is *assembled* rather than about a local derivative:
- **branches that add up.** xmu feeds xhat and sq, so its gradient is dxmu1 (through xhat)
  + dxmu2 (through sq); x feeds xmu and mu, so dx = dx1 + dx2 (the mean's part).
- **broadcast sums.** gamma (D,) is broadcast over the rows of gamma * xhat, so what reaches
  it is summed over axis 0.

`backward_steps` walks the backward pass in the engine's order and records both, for any
graph; `explain` prints them and the stepper shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.node import Node, trace_backward, vjp

__all__ = ["Part", "BackwardStep", "backward_steps", "summed_axes", "axes_text",
           "broadcast_note", "branch_lines", "broadcast_lines", "gradient_name"]

# Elementwise ops whose inputs numpy broadcasts: a gradient to a broadcast input is summed.
BROADCASTING_OPS = {"add", "sub", "mul", "div", "pow", "where", "broadcast_to"}


def gradient_name(label: str) -> str:
    """The name of the gradient of a quantity: "d" + its name (dxmu, divar, dx)."""
    return "d" + label


@dataclass(eq=False)
class Part:
    """One edge's share of a gradient: what `via`'s VJP sends to its input number `index`.

    value: the array, of `to`'s shape; name: "dxmu1" when `to` gets several parts, else
    "dxmu"; summed: (leading, kept) axes of `via`'s shape summed because `to` was broadcast.
    """

    to: Node
    via: Node
    index: int
    value: Any
    name: str = ""
    summed: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())


@dataclass(eq=False)
class BackwardStep:
    """A node the backward pass reaches: the parts arriving from its children (several at a
    node that feeds several others), their sum `total`, and what its own VJP sends on."""

    node: Node
    total: Any
    gradient: str                     # its gradient's name: "dxmu"
    parts: list[Part] = field(default_factory=list)
    sends: list[Part] = field(default_factory=list)

    @property
    def is_sum(self) -> bool:
        """True when several parts add up here (a node with several children)."""
        return len(self.parts) > 1


def summed_axes(child_shape: tuple[int, ...], input_shape: tuple[int, ...]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The axes of `child_shape` a gradient is summed over to fit a broadcast input:
    (leading axes the input lacks, axes where the input has size 1), both in child axes."""
    lead = len(child_shape) - len(input_shape)
    leading = tuple(range(lead))
    kept = tuple(lead + i for i, size in enumerate(input_shape)
                 if size == 1 and child_shape[lead + i] != 1)
    return leading, kept


def axes_text(axes: tuple[int, ...]) -> str:
    """"axis 0" or "axes (0, 2, 3)"."""
    return f"axis {axes[0]}" if len(axes) == 1 else f"axes {axes}"


def broadcast_note(part: Part, label: Callable[[Node], str]) -> str:
    """Why a part is summed, in words: "summed over axis 0: gamma (5,) was broadcast over
    axis 0 (4 rows) of gammax (4, 5)"; "" for a part that is not summed."""
    leading, kept = part.summed
    axes = leading + kept
    if not axes:
        return ""
    shape = part.via.shape
    sizes = ", ".join(f"{shape[a]} {'rows' if a == 0 and len(shape) == 2 else 'along axis ' + str(a)}"
                      for a in axes)
    return (f"summed over {axes_text(axes)}: {label(part.to)} {part.to.shape} was broadcast "
            f"over {axes_text(axes)} ({sizes}) of {label(part.via)} {shape}, so each of its "
            f"entries collects the gradient of every copy")


def _default_label(node: Node) -> str:
    return node.name or node.op or "leaf"


def backward_steps(root: Node, upstream: Any = None,
                   label: Callable[[Node], str] = _default_label) -> list[BackwardStep]:
    """The backward pass of `root` as the engine runs it (no `.grad` changes): every node
    that receives a gradient, newest first, with the parts that arrive at it and the parts
    it sends. label: a node's name in the gradient names (default: its name, else its op)."""
    steps: list[BackwardStep] = []
    arriving: dict[int, list[Part]] = {}
    for node, total in trace_backward(root, upstream):
        step = BackwardStep(node, total, gradient_name(label(node)),
                            parts=arriving.pop(id(node), []))
        # Every part arrives before the node is visited (children are newer than parents),
        # so the parts can be numbered now, in the order they arrived.
        if len(step.parts) > 1:
            for number, part in enumerate(step.parts, start=1):
                part.name = f"{step.gradient}{number}"
        elif step.parts:
            step.parts[0].name = step.gradient
        if node.op_def is not None:
            for index, (parent, value) in enumerate(zip(node.parents, vjp(node, total))):
                if value is None or not parent.requires_grad:
                    continue
                summed = (summed_axes(node.shape, parent.shape)
                          if node.op in BROADCASTING_OPS else ((), ()))
                part = Part(parent, node, index, value, summed=summed)
                step.sends.append(part)
                arriving.setdefault(id(parent), []).append(part)
        steps.append(step)
    return steps


def branch_lines(steps: list[BackwardStep], label: Callable[[Node], str] = _default_label
                 ) -> list[str]:
    """One line per gradient that is a sum of parts: "dxmu = dxmu1 + dxmu2  (dxmu1 via xhat
    |.| 1.2e+00, dxmu2 via sq |.| 3.4e-01)"."""
    lines = []
    for step in steps:
        if not step.is_sum:
            continue
        names = " + ".join(part.name for part in step.parts)
        where = ", ".join(f"{part.name} via {label(part.via)} |{part.name}| "
                          f"{float(np.linalg.norm(part.value)):.3e}" for part in step.parts)
        lines.append(f"{step.gradient} = {names}   ({where})")
    return lines


def broadcast_lines(steps: list[BackwardStep], label: Callable[[Node], str] = _default_label
                    ) -> list[str]:
    """One line per part summed over broadcast axes, saying which axes and why."""
    return [f"{part.name}: {broadcast_note(part, label)}"
            for step in steps for part in step.sends if any(part.summed)]

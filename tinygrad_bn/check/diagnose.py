"""Which step of the backward pass a wrong gradient gets wrong, found from the staged graph.

The staged graph's gradient is a sum over paths, and each path is a product of local
derivatives, one per edge. Scaling one edge's local derivative by c therefore changes every
gradient linearly: grads(c) = grads + (c - 1) * through(edge), where through(edge) is what
flows through that edge (the gradients with the edge cut subtracted from the correct ones).
So for a student's gradients S and the correct ones G, an edge explains the difference
when S - G is a multiple of through(edge): c = 0 is that path left out, c = -1 a sign,
c = 2 a factor 2 too many, N/(N-1) the unbiased 1/(N-1) where 1/N belongs. Edges in series
carry the same paths and explain the same differences: they are reported as one chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.node import Node, graph_nodes, vjp
from ..norm import STAGE_NAMES, NormSpec, staged_nodes

__all__ = ["Departure", "staged_gradients", "find_departure", "describe_departure"]

GRADS = ("dx", "dgamma", "dbeta")


@dataclass(frozen=True)
class Departure:
    """The smallest change to the staged backward that reproduces a wrong gradient."""

    stage: str                 # the stage whose local derivative departs (nearest the output)
    chain: tuple[str, ...]     # the path of equivalent edges, output side first
    factor: float              # 0: the path is left out; else its local derivative times this
    wrong: tuple[str, ...]     # which of dx, dgamma, dbeta differ
    count: int                 # N, the values per statistic (to name N/(N-1))


def staged_gradients(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dout: np.ndarray,
                     spec: NormSpec, edge: tuple[Node, int] | None = None, factor: float = 1.0,
                     graph: tuple[dict[str, Node], tuple[Node, ...]] | None = None
                     ) -> tuple[np.ndarray, ...]:
    """dx, dgamma, dbeta through the staged graph, with one edge's local derivative scaled.

    edge: (node, index of the parent) whose VJP part is multiplied by `factor` (0 cuts it).
    graph: a staged graph built by `build_staged` to reuse (its nodes are not modified).
    """
    stages, leaves = graph if graph is not None else build_staged(x, gamma, beta, spec)
    out = stages["out"]
    pending: dict[Node, Any] = {out: dout}
    totals: dict[Node, Any] = {}
    for node in reversed(graph_nodes(out)):  # newest first: a topological order
        total = pending.pop(node, None)
        if total is None or not node.requires_grad:
            continue
        totals[node] = total
        if node.op_def is None:
            continue
        for index, (parent, part) in enumerate(zip(node.parents, vjp(node, total))):
            if part is None or not parent.requires_grad:
                continue
            if edge is not None and edge == (node, index):
                part = part * factor
            previous = pending.get(parent)
            pending[parent] = part if previous is None else previous + part
    return tuple(np.broadcast_to(totals.get(leaf, np.zeros_like(leaf.data)), leaf.shape).copy()
                 for leaf in leaves)


def build_staged(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, spec: NormSpec
                 ) -> tuple[dict[str, Node], tuple[Node, ...]]:
    """The staged graph on copies of the inputs, and its three leaves."""
    leaves = (Node(np.array(x, np.float64), name="x"), Node(np.array(gamma, np.float64), name="gamma"),
              Node(np.array(beta, np.float64), name="beta"))
    return staged_nodes(*leaves, spec), leaves


def find_departure(student: tuple[np.ndarray, ...], x: np.ndarray, gamma: np.ndarray,
                   beta: np.ndarray, dout: np.ndarray, spec: NormSpec) -> Departure | None:
    """The edge (or chain of equivalent edges) of the staged graph whose local derivative,
    cut or scaled by one constant, gives the student's dx, dgamma, dbeta; None if none does."""
    graph = build_staged(x, gamma, beta, spec)
    correct = staged_gradients(x, gamma, beta, dout, spec, graph=graph)
    flat = np.concatenate([np.ravel(g) for g in correct])
    wrong_vector = np.concatenate([np.ravel(s) for s in student]) - flat
    scale = float(np.linalg.norm(flat)) or 1.0
    matches = []
    for node in graph_nodes(graph[0]["out"]):
        if node.op_def is None or not node.requires_grad:
            continue
        for index, parent in enumerate(node.parents):
            if not parent.requires_grad:
                continue
            cut = staged_gradients(x, gamma, beta, dout, spec, (node, index), 0.0, graph)
            through = flat - np.concatenate([np.ravel(g) for g in cut])
            size = float(through @ through)
            if size <= (1e-9 * scale) ** 2:
                continue  # (nearly) nothing flows through this edge here
            k = float(wrong_vector @ through) / size
            if np.linalg.norm(wrong_vector - k * through) <= 1e-6 * scale:
                matches.append((node, parent, 1.0 + k, through))
    if not matches:
        return None
    # The edge nearest the output is where the backward pass first departs; the others that
    # carry the same paths (edges in series) are its chain.
    matches.sort(key=lambda match: -match[0].creation_number)
    first = matches[0]
    chain = [m for m in matches if np.linalg.norm(m[3] - first[3]) <= 1e-8 * scale]
    path = [m[0].name or m[0].op for m in chain] + [chain[-1][1].name or "input"]
    named = [name for name in path if name in STAGE_NAMES]
    wrong = tuple(name for name, s, g in zip(GRADS, student, correct)
                  if np.linalg.norm(np.ravel(s) - np.ravel(g)) > 1e-9 * scale)
    return Departure(stage=named[0] if named else path[0], chain=tuple(path),
                     factor=first[2], wrong=wrong, count=spec.count)


def describe_departure(departure: Departure) -> str:
    """The sentence a student reads."""
    which = " and ".join(departure.wrong)
    path = " → ".join(departure.chain)
    verb = "equals" if len(departure.wrong) == 1 else "equal"
    c, n = departure.factor, departure.count
    if abs(c) < 1e-6:
        meaning = _meaning(departure.chain)
        return f"your {which} {verb} the correct one with the path {path} left out{meaning}."
    what = _factor_text(c, n, departure.chain)
    return (f"your {which} {verb} the correct one with the local derivative along {path} "
            f"{what}.")


def _meaning(chain: tuple[str, ...]) -> str:
    if "var" in chain or "sq" in chain:
        return ": the variance's dependence on x is missing"
    if "mu" in chain:
        return ": the mean's dependence on x is missing"
    if chain[-1] == "x":
        return ": x's direct path through xmu = x - mu is missing"
    return ""


def _factor_text(c: float, n: int, chain: tuple[str, ...]) -> str:
    known = {-1.0: "with its sign flipped", 2.0: "twice too large", 0.5: "half too small"}
    for value, text in known.items():
        if abs(c - value) < 1e-6 * abs(value):
            extra = " (the derivative of sq = xmu^2 is 2*xmu)" if value in (2.0, 0.5) and \
                "sq" in chain else ""
            return text + extra
    if n > 1 and abs(c - n / (n - 1)) < 1e-6:
        return (f"off by a factor N/(N-1) = {c:.4g} with N = {n}: 1/(N-1) where batch norm's "
                f"biased variance uses 1/N")
    if n > 1 and abs(c - (n - 1) / n) < 1e-6:
        return f"off by a factor (N-1)/N = {c:.4g} with N = {n}: 1/N where 1/(N-1) was used"
    if abs(c - n) < 1e-6 * n:
        return f"{n} times too large (N = {n}: a missing 1/N?)"
    if abs(c - 1 / n) < 1e-6:
        return f"N = {n} times too small (an extra 1/N?)"
    return f"off by a constant factor {c:.4g}"

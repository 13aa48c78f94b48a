"""Drawing cost: how long large and hub-prone graphs take to lay out, with each renderer.

    python -m benchmarks.render [--timeout SECONDS]

Cases: a 40-step recurrence h = tanh(0.9 h + 0.1 x_t) (every step uses the same two
numbers), a 200-op chain with one shared constant, 290-op chains y = y * w + 0.5 sharing
one leaf w that is not a Constant (a parameter; a requires_grad=False Node), and a
20,000-node chain cut to max_nodes. Each is drawn and rendered to SVG with the system `dot`
(when installed) and the embedded WebAssembly Graphviz, timed once each (drawing and layout
together). A shared leaf is drawn once per use: before that, each 290-op chain with one
shared non-Constant leaf took longer than 30 s to lay out (both renderers), 0.3-0.4 s after.
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np

import tinygrad_bn as tb
import viz


def recurrence(steps: int = 40) -> tb.Node:
    rng = np.random.default_rng(0)
    h = tb.Node(np.zeros(4), name="h0")
    for t in range(steps):
        h = (h * 0.9 + tb.Node(rng.standard_normal(4), name=f"x{t}") * 0.1).tanh()
    return h.sum()


def chain(ops: int) -> tb.Node:
    y = tb.Node(1.0, name="x")
    for _ in range(ops // 2):
        y = y * 1.0001 + 0.5
    return y


def shared_leaf_chain(ops: int, requires_grad: bool) -> tb.Node:
    w = tb.Node(1.0001, name="w", requires_grad=requires_grad)
    y = tb.Node(1.0, name="x")
    for _ in range(ops // 2):
        y = y * w + 0.5
    return y


CASES = {"40-step recurrence": (recurrence, 300),
         "200-op chain, shared constant": (lambda: chain(200), 300),
         "290-op chain, shared parameter": (lambda: shared_leaf_chain(290, True), 300),
         "290-op chain, shared requires_grad=False node":
             (lambda: shared_leaf_chain(290, False), 300),
         "20,000-node chain, cut to 300": (lambda: chain(20_000), 300)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="per render (default 60 s)")
    args = parser.parse_args()
    backends = ["embedded"] + (["system"] if shutil.which("dot") else [])
    viz.render_source("digraph {}", "svg", backend="embedded")  # compile the module once
    print(f"| case | graph nodes | drawn | {' | '.join(backends)} |")
    print("|---|---:|---:|" + "---:|" * len(backends))
    for name, (build, max_nodes) in CASES.items():
        root = build()
        cells = []
        for backend in backends:
            start = time.perf_counter()  # drawing and layout together
            graph = viz.draw(root, max_nodes=max_nodes)
            try:
                viz.render_source(graph.source, "svg", backend=backend, timeout=args.timeout,
                                  nodes=graph.node_count)
                cells.append(f"{time.perf_counter() - start:.2f} s")
            except viz.RenderError:
                cells.append(f"> {args.timeout:g} s")
        print(f"| {name} | {graph.total_nodes} | {graph.node_count} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()

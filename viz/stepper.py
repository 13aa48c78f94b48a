"""A backward-pass stepper: one self-contained HTML page that walks the backward pass.

    viz.stepper(loss, "backward_steps.html")

The page holds the graph as inline SVG, the steps as data and a small script; it loads
nothing from anywhere. Each step is one VJP in the order the engine runs them: the node is
highlighted, and the page shows the gradient arriving, the local derivative, and what the
VJP sends to each parent (the arrays for small shapes, summaries for large ones). Buttons
#prev and #next and the arrow keys move; #counter counts; #step names the current node.
"""

from __future__ import annotations

import html
import json
import pathlib
from typing import Any

import numpy as np

from tinygrad_bn.core.node import Node, trace_backward, vjp
from tinygrad_bn.train.files import write_atomic

from .draw import draw

__all__ = ["stepper", "steps_of", "step_name"]

MAX_SHOWN = 24  # entries of an array shown in full; larger ones are summarized


def step_name(node: Node, ident: str) -> str:
    """How the page names a step: the node's name, else its op and drawing id."""
    return node.name if node.name else f"{node.op} ({ident})"


def _array_text(value: Any) -> str:
    array = np.asarray(value)
    if array.size <= MAX_SHOWN:
        with np.printoptions(precision=5, suppress=False, linewidth=60):
            return f"shape {array.shape}\n{np.array2string(array, separator=', ')}"
    return (f"shape {array.shape}: mean {array.mean():.5g}, std {array.std():.5g}, "
            f"range [{array.min():.5g}, {array.max():.5g}]")


def steps_of(root: Node, upstream: Any = None, ids: dict[int, str] | None = None
             ) -> list[dict[str, Any]]:
    """The stepper's data: one dict per VJP the engine runs, in its order."""
    steps = []
    for node, total in trace_backward(root, upstream):
        if node.op_def is None:
            continue
        ident = (ids or {}).get(id(node), "")
        parts = vjp(node, total)
        names = [p.name or p.op or "constant" for p in node.parents]
        formulas = node.op_def.describe(names, node.params, [p.shape for p in node.parents])
        sends = [{"to": name, "formula": formula, "value": _array_text(part)}
                 for parent, name, formula, part in zip(node.parents, names, formulas, parts)
                 if part is not None and parent.requires_grad]
        steps.append({"id": ident, "name": step_name(node, ident), "op": node.op,
                      "arriving": _array_text(total), "sends": sends})
    return steps


def stepper(root: Node, path: str | pathlib.Path, *, upstream: Any = None,
            max_nodes: int = 300) -> pathlib.Path:
    """Write the backward-pass stepper for `root` to `path` (one HTML file); returns the path.

    upstream: the gradient fed to the backward pass, as in `backward` (omit it for a
    one-element root). The graph is drawn top to bottom with its values.
    """
    if not isinstance(root, Node):
        raise TypeError(f"root: expected a tinygrad_bn Node, got {type(root).__name__}")
    graph = draw(root, show_grad=False, max_nodes=max_nodes)
    steps = [step for step in steps_of(root, upstream, graph.ids) if step["id"]]
    page = PAGE.replace("$TITLE", html.escape(f"Backward pass of {root.name or root.op}"))
    page = page.replace("$SVG", _svg_body(graph.svg()))
    page = page.replace("$STEPS", json.dumps(steps).replace("</", "<\\/"))
    return write_atomic(pathlib.Path(path), page)  # whole or not at all


def _svg_body(svg: str) -> str:
    # Inline SVG: drop the XML prologue and doctype, keep the <svg> element.
    return svg[svg.index("<svg"):]


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$TITLE</title>
<style>
  body { font-family: Helvetica, Arial, sans-serif; margin: 0; color: #222; }
  header { position: sticky; top: 0; background: #f4f4f4; padding: 8px 12px;
           border-bottom: 1px solid #ccc; display: flex; gap: 12px; align-items: center; }
  button { font-size: 15px; padding: 4px 12px; }
  #step { font-weight: bold; font-size: 16px; }
  main { display: flex; gap: 12px; padding: 12px; align-items: flex-start; }
  #graph { flex: 1 1 60%; overflow: auto; }
  #graph svg { max-width: 100%; height: auto; }
  aside { flex: 1 1 40%; position: sticky; top: 56px; }
  pre { background: #fafafa; border: 1px solid #ddd; padding: 6px; font-size: 12px;
        white-space: pre-wrap; }
  .current polygon, .current path, .current ellipse { stroke: #d62728; stroke-width: 4px; }
  .done polygon, .done path { stroke: #2ca02c; }
  h3 { margin: 10px 0 4px; font-size: 14px; }
</style>
</head>
<body>
<header>
  <button id="prev" type="button">&#9664; prev</button>
  <span id="counter"></span>
  <button id="next" type="button">next &#9654;</button>
  <span>running the VJP of</span> <span id="step"></span>
  <span style="color:#666">(arrow keys move too)</span>
</header>
<main>
  <div id="graph">$SVG</div>
  <aside>
    <h3>gradient arriving (d loss / d node)</h3><pre id="arriving"></pre>
    <h3>sent to each parent (upstream &times; local derivative)</h3><div id="sends"></div>
  </aside>
</main>
<script>
const STEPS = $STEPS;
const nodes = {};
document.querySelectorAll("#graph g.node").forEach(function (g) {
  const title = g.querySelector("title");
  if (title) { nodes[title.textContent] = g; }
});
let current = 0;
function show(index) {
  current = Math.max(0, Math.min(STEPS.length - 1, index));
  STEPS.forEach(function (step, i) {
    const g = nodes[step.id];
    if (!g) { return; }
    g.classList.toggle("current", i === current);
    g.classList.toggle("done", i < current);
  });
  const step = STEPS[current];
  document.getElementById("step").textContent = step.name;
  document.getElementById("counter").textContent =
    "step " + (current + 1) + " of " + STEPS.length;
  document.getElementById("arriving").textContent = step.arriving;
  const sends = document.getElementById("sends");
  sends.replaceChildren();
  step.sends.forEach(function (send) {
    const title = document.createElement("h3");
    title.textContent = "to " + send.to + ":  " + send.formula;
    const value = document.createElement("pre");
    value.textContent = send.value;
    sends.append(title, value);
  });
  const g = nodes[step.id];
  if (g && g.scrollIntoView) { g.scrollIntoView({block: "center", inline: "center"}); }
}
document.getElementById("prev").addEventListener("click", function () { show(current - 1); });
document.getElementById("next").addEventListener("click", function () { show(current + 1); });
document.addEventListener("keydown", function (event) {
  if (event.key === "ArrowRight") { show(current + 1); }
  if (event.key === "ArrowLeft") { show(current - 1); }
});
show(0);
</script>
</body>
</html>
"""

"""A backward-pass stepper: one self-contained HTML page that walks the backward pass.

    viz.stepper(loss, "backward_steps.html")
    viz.stepper(out, "report.html", upstream=dout, student=record)   # beside a student's code

The page holds the graph as inline SVG, the steps as data and a small script; it loads
nothing from anywhere. Each step is one node the engine's backward pass reaches, in its
order, ending at the leaves: the parts arriving from the node's children (dxmu1 via xhat,
dxmu2 via sq) and their sum, the local derivative, and what the node's VJP sends to each
parent, each as the line of numpy that computes it (a sum over broadcast axes says which
axes and why). The node and the edges the gradient runs along are highlighted.

Keys: arrow keys, Home, End; a click on a node jumps to its step; #prev/#next are disabled
at the ends; #zoom-in, #zoom-out and #zoom-fit scale the graph.

A student record (see `StudentRecord`) adds the student's own variables next to each
stage's correct value: matches in green, the first departure highlighted with its line of
the student's file.
"""

from __future__ import annotations

import html
import json
import pathlib
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinygrad_bn.check.parts import backward_steps, broadcast_note
from tinygrad_bn.core.node import Node
from tinygrad_bn.files import write_atomic

from .code import send_line, sum_line
from .draw import draw
from .inline import ShownPage
from .labels import visible_surrogates

__all__ = ["stepper", "steps_of", "step_name", "StudentStage", "StudentRecord", "page_json",
           "fill_template"]

MAX_SHOWN = 64  # entries of an array shown in full; larger ones are summarized


def step_name(node: Node, ident: str) -> str:
    """How the page names a step: the node's name; else a fused norm's op with what it is
    ("batchnorm (fused)"); else its op and drawing id."""
    if node.name:
        return node.name
    if node.op_def is not None and "spec" in node.params:
        return f"{node.op} (fused)"
    return f"{node.op or 'leaf'} ({ident})" if ident else (node.op or "leaf")


def _array_text(value: Any) -> str:
    array = np.asarray(value)
    if array.size <= MAX_SHOWN:
        # One line per row, however wide: the page scrolls a row rather than wrapping it.
        with np.printoptions(precision=5, suppress=False, linewidth=100_000):
            return f"shape {array.shape}\n{np.array2string(array, separator=', ')}"
    with np.errstate(all="ignore"):
        return (f"shape {array.shape}: mean {array.mean():.5g}, std {array.std():.5g}, "
                f"range [{array.min():.5g}, {array.max():.5g}]")


@dataclass
class StudentStage:
    """One staged quantity as a student's traced code had it.

    name: the quantity ("xmu", "dxmu1", "dvar"); line: the line of the student's file that
    computed it (1-based, None if not found); variable: the student's variable name;
    value: its value (None if not found); expected: the correct value; matches: whether the
    two agree (as the checker judged it).
    """

    name: str
    expected: Any
    matches: bool
    line: int | None = None
    variable: str | None = None
    value: Any = None
    function: str | None = None  # the student's function holding the line (a helper's name)


@dataclass
class StudentRecord:
    """A student's traced backward pass: `stages` in the order checked, `departure` the
    stage where the math first departs (None if nowhere), `file` the file's name and
    `source` its lines."""

    stages: list[StudentStage]
    departure: str | None = None
    file: str = "layers.py"
    source: list[str] = field(default_factory=list)


def _get(entry: Any, key: str, default: Any = None) -> Any:
    if isinstance(entry, Mapping):
        return entry.get(key, default)
    return getattr(entry, key, default)


def _student_data(record: Any) -> dict[str, Any]:
    """The record as the page's data, every name and line as text (the page never reads
    them as markup)."""
    stages = _get(record, "stages")
    if stages is None or isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence):
        raise TypeError(f"student: expected a record with a list of stages, got "
                        f"{type(record).__name__}")
    source = [str(line) for line in (_get(record, "source") or [])]
    spans = _statement_spans(source)
    rows = []
    for index, entry in enumerate(stages):
        name = _get(entry, "name")
        if not isinstance(name, str):
            raise TypeError(f"student.stages[{index}].name: expected a str, got "
                            f"{type(name).__name__}")
        line = _get(entry, "line")
        if line is not None and (isinstance(line, bool) or not isinstance(line, int)):
            raise TypeError(f"student.stages[{index}].line: expected an int or None, got "
                            f"{type(line).__name__}")
        value, expected = _get(entry, "value"), _get(entry, "expected")
        variable = _get(entry, "variable")
        last = spans.get(line, line) if line is not None else None
        text = ("\n".join(source[line - 1:last]) if line is not None and 1 <= line <= len(source)
                else "")  # the whole statement, also when it runs over several lines
        matches = bool(_get(entry, "matches", False))
        function = _get(entry, "function")
        rows.append({
            "name": name, "line": line, "code": textwrap.dedent(text).strip(),
            "variable": None if variable is None else str(variable),
            "function": None if function is None else str(function),
            "value": None if value is None else _array_text(value),
            "expected": None if expected is None else _array_text(expected),
            "matches": matches,
            "agreement": _agreement(matches, value, expected),
        })
    departure = _get(record, "departure")
    return {"file": str(_get(record, "file") or "your file"), "stages": rows,
            "departure": None if departure is None else str(departure)}


def _statement_spans(source: list[str]) -> dict[int, int]:
    """first line -> last line of each statement of the source (empty when it does not parse)."""
    import ast
    try:
        tree = ast.parse("\n".join(source))
    except (SyntaxError, ValueError):
        return {}
    return {node.lineno: node.end_lineno or node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.stmt) and not isinstance(node, (
                ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While, ast.If,
                ast.With, ast.Try))}


def _agreement(matches: bool, value: Any, expected: Any) -> str:
    """"agrees", "differs", or "agrees up to a factor k" when the checker accepted a value
    that is the right one scaled by a count (k = N or 1/N; the code scales it later)."""
    if not matches:
        return "differs"
    try:
        mine, right = np.asarray(value, np.float64).ravel(), np.asarray(expected, np.float64).ravel()
    except (TypeError, ValueError):
        return "agrees"
    if mine.size != right.size or not mine.size or not np.any(right):
        return "agrees"
    factor = float(np.vdot(mine, right) / np.vdot(right, right))
    if abs(factor - 1) <= 1e-6:
        return "agrees"
    shown = f"{factor:.6g}" if abs(factor) >= 1 else f"1/{1 / factor:.6g}"
    return f"agrees up to a factor {shown} (a count your code divides by later)"


def steps_of(root: Node, upstream: Any = None, ids: dict[int, str] | None = None,
             copies: dict[int, list[str]] | None = None) -> list[dict[str, Any]]:
    """The stepper's data: one dict per node the backward pass reaches, in the engine's
    order (op nodes and the leaves at the end). ids, copies: each Node's DOT id(s) in the
    drawing (`Graph.ids`, `Graph.copies`), for the highlighted nodes and edges."""
    ids, copies = ids or {}, copies or {}

    def dot_ids(node: Node) -> list[str]:
        return copies.get(id(node)) or ([ids[id(node)]] if id(node) in ids else [])

    def label(node: Node) -> str:
        if node.name:
            return node.name
        ident = ids.get(id(node), "")
        return f"{node.op or 'leaf'}_{ident}" if ident else (node.op or "leaf")

    def copy_of(part_node: Node, via: Node, index: int) -> str:
        # The DOT id of `part_node` where `via` uses it as input `index`.
        via_id = ids.get(id(via), "")
        copy = f"{via_id}_c{index}"
        return copy if copy in copies.get(id(part_node), []) else ids.get(id(part_node), "")

    walk = backward_steps(root, upstream, label)
    gradient_of = {id(step.node): step.gradient for step in walk}

    def name_of(node: Node) -> str:
        return step_name(node, ids.get(id(node), ""))

    steps = []
    for step in walk:
        node = step.node
        ident = ids.get(id(node), "")
        parts = [{"name": part.name, "via": name_of(part.via), "via_id": ids.get(id(part.via), ""),
                  "value": _array_text(part.value),
                  "line": send_line(part, gradient_of[id(part.via)], label)}
                 for part in step.parts]
        names = [p.name or p.op or "constant" for p in node.parents]
        formulas = (node.op_def.describe(names, node.params, [p.shape for p in node.parents])
                    if node.op_def is not None else [])
        sends = [{"to": name_of(part.to), "name": part.name, "formula": formulas[part.index],
                  "value": _array_text(part.value), "line": send_line(part, step.gradient, label),
                  "note": broadcast_note(part, label)}
                 for part in step.sends]
        # The edges the gradient runs along: into this node's inputs at an op, from the
        # children it came from at a leaf.
        if node.op_def is None:
            edges = [f"{copy_of(node, part.via, part.index)}->{ids.get(id(part.via), '')}"
                     for part in step.parts]
        else:
            edges = [f"{copy_of(part.to, node, part.index)}->{ident}" for part in step.sends]
        steps.append({
            "id": ident, "ids": dot_ids(node), "name": name_of(node), "op": node.op or "leaf",
            "leaf": node.op_def is None, "gradient": step.gradient,
            "arriving": _array_text(step.total), "parts": parts, "sum": sum_line(step),
            "sends": sends, "edges": edges,
            # The staged quantities this step shows: a student record's names match these.
            "quantities": list(dict.fromkeys([label(node), step.gradient,
                                              *(part.name for part in step.parts)])),
        })
    return steps


def page_json(data: Any) -> str:
    """JSON that is inert inside an HTML <script>: `<`, `>`, `&` and the two JavaScript line
    separators escaped as \\u sequences, so no value can close the script, open a comment
    or start markup."""
    text = json.dumps(data, ensure_ascii=False)
    for char in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(char, f"\\u{ord(char):04x}")
    # A lone surrogate (which no encoding writes) reaches the page as the text \udXXX: its
    # backslash escaped for JSON, so names compare alike wherever they appear.
    return visible_surrogates(text, backslash="\\\\")


_PLACEHOLDER = re.compile(r"\$(TITLE|SVG|DATA)\b")


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """Fill $TITLE, $SVG, $DATA in one pass: text put in is never scanned again, so a
    placeholder inside a name stays text."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def stepper(root: Node, path: str | pathlib.Path, *, upstream: Any = None,
            max_nodes: int = 300, student: Any = None, title: str | None = None
            ) -> pathlib.Path:
    """Write the backward-pass stepper for `root` to `path` (one HTML file); returns the path.

    upstream: the gradient fed to the backward pass, as in `backward` (omit it for a
    one-element root). The graph is drawn top to bottom with its values. student: a
    `StudentRecord` (or a mapping with the same keys: stages, departure, file, source;
    each stage a `StudentStage` or a mapping with name, line, variable, value, expected,
    matches); title: the page's title (default "Backward pass of <root>").
    """
    if not isinstance(root, Node):
        raise TypeError(f"root: expected a tinygrad_bn Node, got {type(root).__name__}")
    graph = draw(root, show_grad=False, max_nodes=max_nodes)
    steps = [step for step in steps_of(root, upstream, graph.ids, graph.copies) if step["ids"]]
    data = {"steps": steps, "student": None if student is None else _student_data(student)}
    page = fill_template(PAGE, {
        "TITLE": html.escape(visible_surrogates(title if title is not None
                                                else f"Backward pass of {root.name or root.op}")),
        "SVG": _svg_body(graph.svg()),
        "DATA": page_json(data),
    })
    return ShownPage(write_atomic(pathlib.Path(path), page))  # whole or not at all


def _svg_body(svg: str) -> str:
    # Inline SVG: drop the XML prologue and doctype, keep the <svg> element.
    return svg[svg.index("<svg"):]




# The page: one template, filled by `fill_template` (no other "$NAME" may appear in it).
# Everything that comes from a graph or a student's file enters through $DATA and reaches
# the page as textContent, never as markup.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$TITLE</title>
<style>
  * { box-sizing: border-box; }
  /* One screen: the header and banner on top, the graph and the panel scroll on their own. */
  body { font-family: Helvetica, Arial, sans-serif; margin: 0; color: #222; font-size: 14px;
         display: flex; flex-direction: column; height: 100vh; overflow: hidden; }
  header { flex: none; background: #f4f4f4; padding: 6px 10px;
           border-bottom: 1px solid #ccc; display: flex; flex-wrap: wrap; gap: 8px;
           align-items: center; }
  button { font-size: 14px; padding: 3px 10px; }
  button:disabled { opacity: 0.4; }
  #step { font-weight: bold; font-size: 16px; }
  .hint { color: #666; font-size: 12px; }
  #departure { flex: none; background: #fde2e1; border-bottom: 1px solid #e0a09c; padding: 6px 10px; }
  #departure code { background: #fff; padding: 1px 4px; }
  main { flex: 1; min-height: 0; display: grid; gap: 10px; padding: 8px 10px;
         grid-template-columns: minmax(0, 1fr) minmax(300px, 42%); }
  #graph { overflow: auto; border: 1px solid #eee; }
  #graph svg { display: block; }
  aside { overflow: auto; }
  h2 { font-size: 16px; margin: 4px 0; }
  h3 { margin: 10px 0 4px; font-size: 14px; }
  pre { background: #fafafa; border: 1px solid #ddd; padding: 6px; font-size: 12px; margin: 2px 0;
        white-space: pre; overflow-x: auto; }
  pre.code { background: #eef4ff; border-color: #b8c8e8; }
  .note { color: #7a4b00; font-size: 13px; margin: 2px 0 4px; }
  .part { border-left: 3px solid #1f77b4; padding-left: 6px; margin: 6px 0; }
  .row { border: 1px solid #ccc; border-radius: 4px; padding: 4px 6px; margin: 6px 0; }
  .row.ok { border-color: #2ca02c; background: #eaf7ea; }
  .row.bad { border-color: #d62728; background: #fdeaea; }
  .row.departure { border-width: 3px; }
  table { border-collapse: collapse; font-size: 12px; }
  td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
  tr.ok td:first-child { color: #1a7a1a; } tr.bad td:first-child { color: #b01c1c; }
  tr.jump { cursor: pointer; }
  #graph g.node.has-step { cursor: pointer; }
  .current polygon, .current path, .current ellipse { stroke: #d62728; stroke-width: 4px; }
  .done polygon, .done path { stroke: #2ca02c; }
  .student-ok polygon, .student-ok path { fill: #c9f0c9; }
  .student-departure polygon, .student-departure path { fill: #f7b6b2; }
  g.edge.traversed path { stroke: #d62728; stroke-width: 3px; }
  g.edge.traversed polygon { stroke: #d62728; fill: #d62728; }
</style>
</head>
<body>
<header>
  <button id="prev" type="button">&#9664; prev</button>
  <span id="counter"></span>
  <button id="next" type="button">next &#9654;</button>
  <span id="step"></span>
  <span>zoom</span>
  <button id="zoom-out" type="button" title="zoom out">&minus;</button>
  <span id="zoom-level"></span>
  <button id="zoom-in" type="button" title="zoom in">+</button>
  <button id="zoom-fit" type="button">fit</button>
  <span class="hint">&larr; &rarr; Home End move; click a node to jump to its step</span>
</header>
<div id="departure" hidden></div>
<main>
  <div id="graph">$SVG</div>
  <aside>
    <h2 id="title"></h2>
    <h3>gradient arriving: <code id="gradient"></code></h3>
    <div id="parts"></div>
    <pre id="sum" class="code" hidden></pre>
    <pre id="arriving"></pre>
    <div id="sends-block">
      <h3>sent to each input (upstream &times; local derivative)</h3>
      <div id="sends"></div>
    </div>
    <div id="student" hidden>
      <h3>your code</h3>
      <div id="student-rows"></div>
      <h3>every checked quantity</h3>
      <table id="student-table"><thead><tr><th>quantity</th><th>line</th><th>your variable</th>
        <th>agrees</th></tr></thead><tbody></tbody></table>
    </div>
  </aside>
</main>
<script>
"use strict";
const DATA = $DATA;
const STEPS = DATA.steps;
const STUDENT = DATA.student;
const svg = document.querySelector("#graph svg");
// Every table keyed by a name is a Map: a name is data, even "__proto__" or "constructor".
const nodes = new Map();
const edges = new Map();
function listIn(map, key) {
  if (!map.has(key)) { map.set(key, []); }
  return map.get(key);
}
document.querySelectorAll("#graph g.node").forEach(function (g) {
  const title = g.querySelector("title");
  if (title) { nodes.set(title.textContent, g); }
});
document.querySelectorAll("#graph g.edge").forEach(function (g) {
  const title = g.querySelector("title");
  if (title) { listIn(edges, title.textContent).push(g); }
});
const stepOf = new Map();
STEPS.forEach(function (step, i) {
  step.ids.forEach(function (ident) { stepOf.set(ident, i); });
});
function element(tag, text, className) {
  const made = document.createElement(tag);
  if (text !== undefined && text !== null) { made.textContent = text; }
  if (className) { made.className = className; }
  return made;
}
function graphNodes(step) {
  return step.ids.map(function (ident) { return nodes.get(ident); }).filter(Boolean);
}

// Zoom: 1 is the drawing's own size (its 10 pt text is 13.3 px); the default fits the
// column, but never below the zoom at which node text is 10 px.
const box = svg.viewBox.baseVal;
const naturalWidth = box.width * 4 / 3;
const naturalHeight = box.height * 4 / 3;
const MIN_LEGIBLE = 0.75;
let zoom = 1;
function setZoom(value) {
  zoom = Math.max(0.2, Math.min(4, value));
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  svg.style.width = (naturalWidth * zoom) + "px";
  svg.style.height = (naturalHeight * zoom) + "px";
  document.getElementById("zoom-level").textContent = Math.round(zoom * 100) + "%";
}
function fitZoom() {
  return (document.getElementById("graph").clientWidth - 4) / naturalWidth;
}
setZoom(Math.max(MIN_LEGIBLE, Math.min(1, fitZoom())));
document.getElementById("zoom-in").addEventListener("click", function () { setZoom(zoom * 1.25); });
document.getElementById("zoom-out").addEventListener("click", function () { setZoom(zoom / 1.25); });
document.getElementById("zoom-fit").addEventListener("click", function () { setZoom(fitZoom()); });

// The student's record: rows by quantity name, the departure's step.
const rowsByName = new Map();
let departureStep = -1;
if (STUDENT) {
  STUDENT.stages.forEach(function (row) { listIn(rowsByName, row.name).push(row); });
  STEPS.forEach(function (step, i) {
    if (STUDENT.departure !== null && step.quantities.indexOf(STUDENT.departure) >= 0 &&
        departureStep < 0) { departureStep = i; }
  });
}
function rowsOf(step) {
  let found = [];
  step.quantities.forEach(function (name) {
    if (rowsByName.has(name)) { found = found.concat(rowsByName.get(name)); }
  });
  return found;
}
// the function the page steps through (a report page): a line of another one names it
const SHOWN = DATA.report ? DATA.report.shown : null;
function where(row) {
  return row.line === null ? "not found in " + STUDENT.file
                           : STUDENT.file + " line " + row.line +
                             (row.function && row.function !== SHOWN ? ", in " + row.function : "");
}
if (STUDENT) {
  document.getElementById("student").hidden = false;
  STEPS.forEach(function (step, i) {
    const rows = rowsOf(step);
    if (!rows.length) { return; }
    const isDeparture = i === departureStep;
    const allMatch = rows.every(function (row) { return row.matches; });
    graphNodes(step).forEach(function (g) {
      g.classList.toggle("student-departure", isDeparture);
      g.classList.toggle("student-ok", !isDeparture && allMatch);
    });
  });
  const body = document.querySelector("#student-table tbody");
  STUDENT.stages.forEach(function (row) {
    const tr = element("tr", null, row.matches ? "ok" : "bad");
    tr.append(element("td", row.name), element("td", row.line === null ? "-" : String(row.line)),
              element("td", row.variable === null ? "-" : row.variable),
              element("td", row.matches ? (row.agreement && row.agreement !== "agrees" ?
                                           "yes, up to a factor" : "yes") : "no"));
    const target = STEPS.findIndex(function (step) {
      return step.quantities.indexOf(row.name) >= 0;
    });
    if (target >= 0) {
      tr.classList.add("jump");
      tr.addEventListener("click", function () { show(target); });
    }
    body.append(tr);
  });
  if (STUDENT.departure !== null) {
    const banner = document.getElementById("departure");
    const rows = rowsByName.get(STUDENT.departure) || [];
    banner.hidden = false;
    banner.append(element("strong", "Your code departs from the correct backward pass at " +
                                    STUDENT.departure));
    if (rows.length) {
      banner.append(element("span", ": " + where(rows[0]) + "  "));
      if (rows[0].code) { banner.append(element("code", rows[0].code)); }
    }
    if (departureStep >= 0) {
      const go = element("button", "show that step");
      go.type = "button";
      go.id = "show-departure";
      go.style.marginLeft = "8px";
      go.addEventListener("click", function () {
        show(departureStep);
        const card = document.querySelector("#student-rows .row.departure");
        if (card && card.scrollIntoView) { card.scrollIntoView({block: "center"}); }
      });
      banner.append(go);
    }
  }
}

let current = 0;
function show(index) {
  current = Math.max(0, Math.min(STEPS.length - 1, index));
  const step = STEPS[current];
  STEPS.forEach(function (other, i) {
    graphNodes(other).forEach(function (g) {
      g.classList.toggle("current", i === current);
      g.classList.toggle("done", i < current);
    });
  });
  document.querySelectorAll("#graph g.edge.traversed").forEach(function (g) {
    g.classList.remove("traversed");
  });
  step.edges.forEach(function (key) {
    (edges.get(key) || []).forEach(function (g) { g.classList.add("traversed"); });
  });
  document.getElementById("step").textContent = step.name;
  document.getElementById("title").textContent =
    (step.leaf ? "leaf " : "") + step.name + (step.leaf ? "" : " (" + step.op + ")");
  document.getElementById("counter").textContent =
    "step " + (current + 1) + " of " + STEPS.length;
  document.getElementById("prev").disabled = current === 0;
  document.getElementById("next").disabled = current === STEPS.length - 1;
  document.getElementById("gradient").textContent = step.gradient;
  const parts = document.getElementById("parts");
  parts.replaceChildren();
  if (step.parts.length > 1) {
    parts.append(element("div", step.parts.length + " parts arrive, one from each use of " +
                                step.name + "; the gradient is their sum:", "note"));
    step.parts.forEach(function (part) {
      const block = element("div", null, "part");
      block.append(element("div", part.name + " (via " + part.via + ")"),
                   element("pre", part.line, "code"), element("pre", part.value));
      parts.append(block);
    });
  } else if (step.parts.length === 1) {
    parts.append(element("div", "from " + step.parts[0].via + ": " + step.parts[0].line, "note"));
  } else {
    parts.append(element("div", "the upstream gradient fed to backward", "note"));
  }
  const sum = document.getElementById("sum");
  sum.hidden = !step.sum;
  sum.textContent = step.sum;
  document.getElementById("arriving").textContent = step.arriving;
  const sends = document.getElementById("sends");
  sends.replaceChildren();
  document.getElementById("sends-block").hidden = step.leaf;
  step.sends.forEach(function (send) {
    sends.append(element("h3", "to " + send.to + ":  " + send.formula));
    sends.append(element("pre", send.line, "code"));
    if (send.note) { sends.append(element("div", send.note, "note")); }
    sends.append(element("pre", send.value));
  });
  if (STUDENT) {
    const list = document.getElementById("student-rows");
    list.replaceChildren();
    const rows = rowsOf(step);
    if (!rows.length) {
      list.append(element("div", "no quantity of this step was checked", "note"));
    }
    rows.forEach(function (row) {
      const isDeparture = row.name === STUDENT.departure;
      const card = element("div", null,
                           "row " + (row.matches ? "ok" : "bad") + (isDeparture ? " departure" : ""));
      card.append(element("div", row.name + ": " + (row.agreement || (row.matches ? "agrees" : "differs")) +
                                 (isDeparture ? " (first departure)" : "")));
      card.append(element("div", where(row) + (row.variable === null ? "" : ", variable " + row.variable)));
      if (row.code) { card.append(element("pre", row.code, "code")); }
      card.append(element("div", "your value"),
                  element("pre", row.value === null ? "not found" : row.value));
      card.append(element("div", "correct value"), element("pre", row.expected));
      list.append(card);
    });
  }
  graphNodes(step).slice(0, 1).forEach(function (g) {
    if (g.scrollIntoView) { g.scrollIntoView({block: "center", inline: "center"}); }
  });
}
nodes.forEach(function (g, ident) {
  if (!stepOf.has(ident)) { return; }
  g.classList.add("has-step");
  g.addEventListener("click", function () { show(stepOf.get(ident)); });
});
document.getElementById("prev").addEventListener("click", function () { show(current - 1); });
document.getElementById("next").addEventListener("click", function () { show(current + 1); });
document.addEventListener("keydown", function (event) {
  const moves = {ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0,
                 End: STEPS.length - 1};
  if (Object.prototype.hasOwnProperty.call(moves, event.key)) {
    event.preventDefault();
    show(moves[event.key]);
  }
});
show(0);
</script>
</body>
</html>
"""

"""The check report as a page: a student's own backward pass beside the right one.

    report = tb.check_layers("cs231n/layers.py")
    viz.check_report_page(report, "report.html")          # or `tinygrad-bn check ... --html`
    viz.check_report_page(report, "alt.html", function="batchnorm_backward_alt")

The page is the backward-pass stepper (`viz.stepper`) of the staged graph built on the very
inputs the checker judged the function on (its x, gamma, beta and dout), with the student's
traced variables beside each stage's correct value: the quantities a line of the student's
file held in green, the first departure highlighted with its line. Above it, the verdict
of every function checked. One self-contained file, written to a temporary name and
renamed; every name and line of the student's file reaches the page as text only.

Which function the page steps through: `function=`, else `LayersReport.focus()` (the one
`save_case` saves too): the first failing backward the checker traced, else the first failing
function it traced, else the first function that does not pass, else the first backward (all
green when it passes), else the first function checked.
"""

from __future__ import annotations

import html
import os
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinygrad_bn.core.node import Node
from tinygrad_bn.files import write_atomic
from tinygrad_bn.grading.assignment import FORWARD_OF, FUNCTIONS, GROUPS, case_inputs
from tinygrad_bn.grading.layers import DEFAULT_MEMORY, LayersReport
from tinygrad_bn.grading.lines import trace_student_backward
from tinygrad_bn.grading.locate import StageMatch
from tinygrad_bn.grading.replay import judge_in_box
from tinygrad_bn.grading.student import student_loader
from tinygrad_bn.norm import norm_staged

from .draw import draw
from .labels import visible_surrogates
from .stepper import (
    PAGE,
    StudentRecord,
    StudentStage,
    _student_data,
    _svg_body,
    fill_template,
    page_json,
    steps_of,
)

__all__ = ["check_report_page", "student_record", "chosen_function", "report_case", "ReportCase"]


@dataclass
class ReportCase:
    """The inputs one function was judged on and what the trace of the student's code found.

    kind: "batch", "layer", "spatial" or "group"; x, gamma, beta, dout: the checker's arrays
    (gamma and beta in the shape the assignment passes them); eps, groups: the norm's
    parameters; stages: the per-stage record (empty when nothing was traced); traced: where
    the record comes from ("the check", "a trace of the passing function", or why none)."""

    kind: str
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    dout: np.ndarray
    eps: float
    groups: int | None
    stages: list[StageMatch]
    traced: str


def chosen_function(report: LayersReport, function: str | None = None) -> str:
    """The function the page steps through (see the module docstring)."""
    if not isinstance(report, LayersReport):
        raise TypeError(f"report: expected the LayersReport of tb.check_layers, got "
                        f"{type(report).__name__}")
    if report.error is not None:
        raise ValueError(f"report: {report.source} could not be loaded ({report.error}); "
                         f"there is nothing to show")
    if not report.results:
        raise ValueError(f"report: {report.source} defines none of the checked functions")
    if function is not None:
        if function not in report.results:
            raise ValueError(f"function: expected one of the checked functions "
                             f"{', '.join(report.results)}, got {function!r}")
        return function
    return report.focus() or next(iter(report.results))


def _case_from_result(kind: str, case: dict[str, np.ndarray]) -> dict[str, Any]:
    groups = int(case["groups"]) if "groups" in case else 0
    return {"x": np.asarray(case["x"]), "gamma": np.asarray(case["gamma"]),
            "beta": np.asarray(case["beta"]), "dout": np.asarray(case["dout"]),
            "eps": float(case["eps"]), "groups": groups or None}


def _checker_inputs(kind: str, seed: int) -> dict[str, Any]:
    # The first of the checker's own random cases for this seed (what it judges first).
    spec, x, gamma, beta, dout = case_inputs(kind, seed)
    return {"x": x, "gamma": gamma, "beta": beta, "dout": dout, "eps": spec.eps,
            "groups": GROUPS if kind == "group" else None}


def _trace_passing_backward(source: pathlib.Path, name: str, seed: int, timeout: float,
                            memory: int | None, functions: dict[str, str]
                            ) -> tuple[list[StageMatch], dict[str, np.ndarray]] | None:
    """The checker traces a function only when it fails; for one it passed, run the same
    line trace (in the same sandbox) to get the per-stage record: (stages, case) or None."""
    kind = FUNCTIONS[name][0]
    loader = student_loader(source.resolve(), dict(functions))

    def trace(found: dict[str, Any]) -> dict[str, Any]:  # in the box and again here
        result: dict[str, Any] = {}
        trace_student_backward(found[name], found[FORWARD_OF[kind]], name, kind, seed, [],
                               result)
        return result

    result, outcome, misfit = judge_in_box(loader, trace, timeout, memory)
    if result is None or not result.get("case"):
        return None
    return list(result.get("stages", [])), dict(result["case"])


def report_case(report: LayersReport, name: str, *, seed: int = 0, timeout: float = 60.0,
                memory: int | None = DEFAULT_MEMORY,
                functions: dict[str, str] | None = None) -> ReportCase:
    """The inputs `name` was judged on and its per-stage record (see ReportCase)."""
    result = report.results[name]
    kind, direction = FUNCTIONS[name]
    if result.case:
        return ReportCase(kind=kind, **_case_from_result(kind, result.case),
                          stages=list(result.stages), traced="the check")
    source = pathlib.Path(report.source)
    if result.status == "pass" and direction == "backward" and source.is_file():
        traced = _trace_passing_backward(source, name, seed, timeout, memory, functions or {})
        if traced is not None:
            stages, case = traced
            return ReportCase(kind=kind, **_case_from_result(kind, case), stages=stages,
                              traced="a trace of the passing function")
    why = ("the check traces a wrong value only" if result.status != "pass" else
           "a passing forward is not traced" if direction == "forward" else
           "the source is not a file")
    if result.status in ("error", "not implemented"):
        why = f"it is {result.status}"
    return ReportCase(kind=kind, **_checker_inputs(kind, seed), stages=[], traced=why)


def student_record(stages: list[StageMatch], file: str, source: list[str],
                   line: int | None = None, variable: str | None = None) -> StudentRecord:
    """The stepper's record of a student's traced code from the checker's per-stage record.

    Kept: each quantity a line of the student's file held (green) and the first departure
    (with the line that should have held it). A quantity no line held is left out: in code
    written another way (a closed form) it is not wrong, only absent. line, variable: where
    the checker reports the departure; when that is not the line holding the departed
    quantity (a branch computed right but never used), the departure is shown there first."""
    rows = []
    for s in stages:
        if s.departure and s.matches and line is not None and line != s.line:
            rows.append(StudentStage(name=s.name, expected=s.expected, matches=False,
                                     line=line, variable=variable, value=None))
        if s.matches or s.departure:
            rows.append(StudentStage(name=s.name, expected=s.expected, matches=bool(s.matches),
                                     line=s.line, variable=s.variable, value=s.value,
                                     function=s.function))
    departure = next((s.name for s in stages if s.departure), None)
    return StudentRecord(stages=rows, departure=departure, file=file, source=source)


def _verdicts(report: LayersReport, shown: str, case: ReportCase) -> dict[str, Any]:
    results = list(report.results.values())
    passed = sum(r.ok for r in results)
    everything = report.ok
    summary = (f"Every function passes ({passed} of {len(results)})" if everything else
               f"{passed} of {len(results)} functions pass")
    absent = [s.name for s in case.stages if not s.matches and not s.departure]
    traced = (f"your variables from {case.traced}" if case.stages else
              f"no variables of yours to show ({case.traced})")
    result = report.results[shown]
    running = None
    if (result.stage or "").startswith("running_") and result.case:
        running = [{"name": key,
                    "yours": _text(result.case.get(f"student_{key}")),
                    "correct": _text(result.case.get(f"correct_{key}"))}
                   for key in ("running_mean", "running_var")]
    return {
        "summary": summary, "ok": everything, "shown": shown, "source": report.source,
        "traced": traced, "running": running,
        "absent": absent,
        "rows": [{"name": r.name, "status": r.status, "line": r.line,
                  "diagnosis": r.diagnosis, "shown": r.name == shown} for r in results],
    }


def _text(value: Any) -> str:
    if value is None:
        return "not stored"
    return np.array2string(np.asarray(value), precision=6, separator=", ")


def check_report_page(report: LayersReport, path: str | os.PathLike, *,
                      function: str | None = None, seed: int = 0, timeout: float = 60.0,
                      memory: int | None = DEFAULT_MEMORY,
                      functions: dict[str, str] | None = None) -> pathlib.Path:
    """Write the check report page for `report` (from `tb.check_layers`) to `path`.

    function: the checked function to step through (default: see the module docstring);
    seed, timeout, memory, functions: as given to `check_layers` (used only to trace a
    passing backward, which the check itself does not trace). The graph is the staged
    norm on the function's judged case: x (N, D) or (N, C, H, W), gamma and beta of the
    feature shape, dout of x's shape. Returns the path written."""
    name = chosen_function(report, function)
    case = report_case(report, name, seed=seed, timeout=timeout, memory=memory,
                       functions=functions)
    source_path = pathlib.Path(report.source)
    lines = (source_path.read_text(encoding="utf-8", errors="replace").splitlines()
             if source_path.is_file() else [])
    x, gamma, beta = Node(case.x, name="x"), Node(case.gamma, name="gamma"), \
        Node(case.beta, name="beta")
    out = norm_staged(case.kind, x, gamma, beta, eps=case.eps, groups=case.groups)
    graph = draw(out, show_grad=False)
    steps = [step for step in steps_of(out, case.dout, graph.ids, graph.copies) if step["ids"]]
    result = report.results[name]
    record = (student_record(case.stages, report.source, lines, result.line, result.variable)
              if case.stages else None)
    data = {"steps": steps, "student": None if record is None else _student_data(record),
            "report": _verdicts(report, name, case)}
    page = fill_template(REPORT_PAGE, {
        "TITLE": html.escape(visible_surrogates(f"{name} in {report.source}: the check beside "
                                                "the backward pass")),
        "SVG": _svg_body(graph.svg()),
        "DATA": page_json(data),
    })
    return write_atomic(pathlib.Path(path), page)  # a whole page or none


# The stepper's page with the verdicts above it. Inserted at two anchors of the stepper's
# template; a changed template fails here, at import, not in a student's browser.
_VERDICT_STYLE = """
  #verdict { flex: none; max-height: 30vh; overflow: auto; padding: 6px 10px;
             border-bottom: 1px solid #ccc; background: #fff; }
  #verdict.all-pass { background: #eaf7ea; }
  #verdict-summary { font-weight: bold; font-size: 15px; }
  #verdict table { width: 100%; table-layout: fixed; margin-top: 4px; }
  #verdict td { overflow-wrap: anywhere; vertical-align: top; }
  #verdict col.name { width: 190px; } #verdict col.status { width: 110px; }
  #verdict col.line { width: 50px; }
  #verdict tr.pass td.status { color: #1a7a1a; font-weight: bold; }
  #verdict tr.fail td.status, #verdict tr.error td.status { color: #b01c1c; font-weight: bold; }
  #verdict tr.shown td { background: #fff8d6; }
</style>"""
_VERDICT_HTML = """<section id="verdict">
  <div><span id="verdict-summary"></span> <span id="verdict-shown" class="hint"></span></div>
  <table id="verdict-table"><colgroup><col class="name"><col class="status"><col class="line">
    <col></colgroup>
    <thead><tr><th>function</th><th>verdict</th><th>line</th><th>diagnosis</th></tr></thead>
    <tbody></tbody></table>
  <div id="verdict-absent" class="note" hidden></div>
  <div id="verdict-running" hidden></div>
  <div id="verdict-key" class="hint">key to the graph's fills: light green, a quantity a line of
    yours holds (the inputs too, when your code holds them); pink, where your code first departs;
    red outline, the step shown; green outline, steps done; red edges, the gradient's way back.
    The small key under the graph tells the kinds of node (blue inputs and parameters) before
    your code colours them.</div>
</section>
<div id="departure" hidden></div>"""
_VERDICT_SCRIPT = """
(function () {
  const REPORT = DATA.report;
  const box = document.getElementById("verdict");
  box.classList.toggle("all-pass", REPORT.ok);
  document.getElementById("verdict-summary").textContent = REPORT.summary + " in " + REPORT.source;
  document.getElementById("verdict-shown").textContent =
    "stepping through " + REPORT.shown + "; " + REPORT.traced;
  if (REPORT.running) {
    const running = document.getElementById("verdict-running");
    running.hidden = false;
    running.append(element("div", REPORT.shown + " departs in its running statistics (its " +
                                  "train-mode output is right): after one train step", "note"));
    REPORT.running.forEach(function (row) {
      running.append(element("div", row.name + ", yours"), element("pre", row.yours),
                     element("div", row.name + ", correct"), element("pre", row.correct));
    });
  }
  const body = document.querySelector("#verdict-table tbody");
  REPORT.rows.forEach(function (row) {
    const tr = element("tr", null, row.status.replace(/ /g, "-") + (row.shown ? " shown" : ""));
    tr.append(element("td", row.name), element("td", row.status.toUpperCase(), "status"),
              element("td", row.line === null ? "" : String(row.line)),
              element("td", row.diagnosis));
    body.append(tr);
  });
  if (REPORT.absent.length) {
    const absent = document.getElementById("verdict-absent");
    absent.hidden = false;
    absent.textContent = "held by no line of yours (computed another way, or after the " +
                         "departure): " + REPORT.absent.join(", ");
  }
})();
show(0);
</script>"""


def _insert(template: str, anchor: str, replacement: str) -> str:
    if template.count(anchor) != 1:
        raise RuntimeError(f"the stepper's page no longer has exactly one {anchor!r}")
    return template.replace(anchor, replacement)


REPORT_PAGE = _insert(_insert(_insert(PAGE, "</style>", _VERDICT_STYLE),
                              '<div id="departure" hidden></div>', _VERDICT_HTML),
                      "show(0);\n</script>", _VERDICT_SCRIPT)

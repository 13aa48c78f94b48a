"""The check report page for a function of the assignment other than the normalizations: the
verdicts above, and the stepper through the function's staged graph on the case it was judged
on (the failing case, or its first case when it passes)."""

from __future__ import annotations

import html
import os
import pathlib
from typing import Any

from tinygrad_bn.files import write_atomic
from tinygrad_bn.grading.casefile import case_from_arrays
from tinygrad_bn.grading.layers import LayersReport
from tinygrad_bn.grading.table import TABLE, entry

from .draw import draw
from .inline import ShownPage
from .labels import visible_surrogates
from .report import REPORT_PAGE
from .stepper import _svg_body, fill_template, page_json, steps_of

__all__ = ["page_function", "layer_report_page"]


def page_function(report: LayersReport, function: str | None = None) -> str:
    """The function a page shows: `function`; for a report of normalizations only,
    `report.chosen_function`'s choice; else the first failing backward, the first failing
    function, the first backward, the first function."""
    from .report import chosen_function
    if not isinstance(report, LayersReport):
        raise TypeError(f"report: expected the LayersReport of tb.check_layers, got "
                        f"{type(report).__name__}")
    if function is not None and function in TABLE and function in report.results:
        return function
    if function is not None or not any(name in TABLE for name in report.results):
        return chosen_function(report, function)  # its checks and its messages
    results = list(report.results.values())

    def backward(name: str) -> bool:
        return "backward" in name or name.endswith("_loss")

    for wanted in (lambda r: r.status == "fail" and backward(r.name),
                   lambda r: r.status == "fail", lambda r: backward(r.name)):
        found = next((r.name for r in results if wanted(r)), None)
        if found is not None:
            return found
    return results[0].name


def layer_report_page(report: LayersReport, path: str | os.PathLike, function: str) -> pathlib.Path:
    """Write the page of table function `function` of `report` to `path` (whole or not at all)."""
    if function not in TABLE:
        raise ValueError(f"function: expected one of {', '.join(TABLE)}, got {function!r}")
    e = entry(function)
    result = report.results[function]
    if result.case:
        _, case, _ = case_from_arrays(result.case)
    else:
        case = e.cases({"p_means": "keep", "p_read": ""})[0]
    root, upstream = e.staged(case)
    graph = draw(root, show_grad=False)
    steps = [s for s in steps_of(root, upstream, graph.ids, graph.copies) if s["ids"]]
    results = list(report.results.values())
    passed = sum(r.ok for r in results)
    rows = [{"name": r.name, "status": r.status, "line": r.line, "diagnosis": r.diagnosis,
             "shown": r.name == function} for r in results]
    verdicts: dict[str, Any] = {
        "summary": (f"Every function passes ({passed} of {len(results)})" if report.ok else
                    f"{passed} of {len(results)} functions pass"),
        "ok": report.ok, "shown": function, "source": report.source,
        "traced": f"the case {function} is judged on (your own variables are not shown for it)",
        "absent": [], "rows": rows}
    page = fill_template(REPORT_PAGE, {
        "TITLE": html.escape(visible_surrogates(f"{function} in {report.source}: the check beside "
                                                "the staged backward pass")),
        "SVG": _svg_body(graph.svg()),
        "DATA": page_json({"steps": steps, "student": None, "report": verdicts}),
    })
    return ShownPage(write_atomic(pathlib.Path(path), page))


def report_page(report: LayersReport, path: str | os.PathLike, *, function: str | None = None,
                **options: Any) -> pathlib.Path:
    """The check report page of any function of the assignment (`viz.check_report_page`):
    a normalization's with your traced variables (`report.check_report_page`, `options` as
    it takes them), any other's through its staged graph; shown inline in Jupyter."""
    from .report import check_report_page
    name = page_function(report, function)
    if name in TABLE:
        return layer_report_page(report, path, name)
    return ShownPage(check_report_page(report, path, function=name, **options))

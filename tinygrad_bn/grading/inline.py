"""The check report as HTML for Jupyter (`LayersReport._repr_html_`): the verdict table, each
failing function's line of code beside its verdict, the summary. Every text from the student's
file is escaped; the page fits a notebook's column (no fixed widths)."""

from __future__ import annotations

import html
import pathlib
from typing import Any

__all__ = ["report_html"]

_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "error": "#9a6700",
            "not implemented": "#57606a"}


def _source_line(report: Any, result: Any) -> str | None:
    """The text of the reported line, read (as text, never run) from the checked file."""
    path = pathlib.Path(report.source)
    if result.line is None or path.suffix != ".py" or not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return lines[result.line - 1].strip() if 0 < result.line <= len(lines) else None


def report_html(report: Any) -> str:
    """report (a LayersReport) as one self-contained HTML fragment."""
    e = html.escape
    parts = [f"<div class='tinygrad-bn-check' style='max-width:100%'><p><b>{e(report.source)}"
             f"</b> against the staged graphs</p>"]
    parts += [f"<p><i>note: {e(n)}</i></p>" for n in report.notes]
    if report.error is not None:
        parts.append(f"<p style='color:#cf222e'>cannot be loaded: {e(report.error)}</p></div>")
        return "".join(parts)
    parts.append("<table style='border-collapse:collapse;width:100%;font-size:90%'><tr>"
                 "<th style='text-align:left'>function</th><th>status</th>"
                 "<th style='text-align:left'>where</th><th style='text-align:left'>verdict</th></tr>")
    for name, result in report.results.items():
        colour = _COLOURS.get(result.status, "#000")
        where = result.where or (f"line {result.line}" if result.line else "")
        if result.function and result.function != name and where:
            where += f" ({result.function})"
        code = _source_line(report, result)
        detail = e(result.diagnosis)
        if code:
            detail += f"<br><code>{e(code)}</code>"
        detail += "".join(f"<br><i>warning: {e(w)}</i>" for w in result.warnings)
        parts.append(f"<tr style='border-top:1px solid #d0d7de'><td><code>{e(name)}</code></td>"
                     f"<td style='color:{colour};font-weight:bold;text-align:center'>"
                     f"{e(result.status.upper())}</td><td>{e(where)}</td>"
                     f"<td style='word-break:break-word'>{detail}</td></tr>")
    for name, similar in report.missing.items():
        parts.append(f"<tr><td><code>{e(name)}</code></td><td>NOT FOUND</td><td></td>"
                     f"<td>did you mean <code>{e(similar)}</code>?</td></tr>")
    for name in report.others:
        parts.append(f"<tr><td><code>{e(name)}</code></td><td>NOT JUDGED</td><td></td>"
                     f"<td>not a function of the assignment</td></tr>")
    parts.append("</table>")
    counts = report.counts()
    parts.append(f"<p>{counts['pass']} of {len(report.results)} functions pass" + "".join(
        f", {v} {e(k)}" for k, v in counts.items() if v and k not in ("pass",)) + "</p></div>")
    return "".join(parts)

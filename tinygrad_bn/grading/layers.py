"""Check a student's own CS231n `layers.py` against the staged graphs.

    report = check_layers("cs231n/layers.py")     # a path, an imported module, or a dict
    print(report); report.ok
    result = report.results["batchnorm_backward"]
    result.status, result.diagnosis, result.line, result.variable, result.stages

Every function the source defines among FUNCTIONS (all of the assignment's) is called with
the assignment's signature on several inputs and judged by its values against the staged
graph. The functions other than the normalizations are judged from the table of the
assignment (`table.py`, `functions/`, judged by `entries.py`). A normalization's
forward in parts (train-mode output, running statistics, test-mode output; a float32
input returned in float64 is a warning), a backward's dx, dgamma, dbeta (from the cache of
the student's own forward; each judged on its own); inputs are handed over as copies (a
write into them is noted, never read back).
Layouts a student may choose pass: running statistics of shape (1, D), lists for tuples.

A wrong function is run again under a line tracer and its own intermediates are matched
against the catalogue of correct quantities (`catalogue.py`, `locate.py`): `result.line`
and `result.variable` name the first line whose value departs, the sentence says what it
should be and which known slip it matches. `result.stages` is the per-stage record: one
`StageMatch` per correct quantity (name, formula, line, variable, function, value,
expected, matches, departure), `result.to_dict()` the whole result as JSON-friendly data.

Each function's calls run in a box (`sandbox.py`, walls in `walls.py`): the student's code
runs there and nothing else; its calls are recorded and the judging runs here, on the
checker's own inputs, with the recorded results (`replay.py`), so no verdict comes from the
process that ran the student's code. This file holds the verdicts and the report (student
text escaped, `text.py`); `student.py` loads the student's file, `assignment.py` calls its
functions on the checker's inputs, `judge.py` judges one function and `lines.py` finds the
line where a wrong one departs.
"""

from __future__ import annotations

import io
import math
import os
import pathlib
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..files import write_atomic
from .entries import judge_entry
from .judge import judge_function
from .locate import StageMatch
from .replay import judge_in_box
from .sandbox import run_isolated
from .student import from_namespace, loaded_names, resolve_source, student_loader
from .table import ASSIGNMENT_NAMES as FUNCTIONS
from .table import NORMALIZATION_NAMES
from .text import clean, shown

__all__ = ["FUNCTIONS", "FunctionResult", "LayersReport", "check_layers", "DEFAULT_MEMORY"]


DEFAULT_MEMORY = 4 * 2**30  # address space per child, bytes


@dataclass
class FunctionResult:
    """The verdict on one function.

    status: "pass", "fail", "not implemented" or "error"; diagnosis: the sentence a student
    reads; stage: the staged quantity it departs at; line, variable, function: where in the
    student's file (function may be the forward, for a value the backward took from its
    cache); variant: the known slip the wrong value matches; parts: a forward's verdict per
    part ("train", "running statistics", "test", "dtype") or a backward's per gradient;
    warnings: what is not wrong but worth knowing; output: what the function printed
    (truncated); stages: the per-stage record (see `locate.StageMatch`); case: the inputs,
    the student's outputs and every correct stage value of the judged case (arrays)."""

    name: str
    status: str
    diagnosis: str
    stage: str | None = None
    line: int | None = None
    variable: str | None = None
    function: str | None = None
    variant: str | None = None
    slip: str = ""
    file: str = ""
    parts: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    output: str = ""
    stages: list[StageMatch] = field(default_factory=list)
    case: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    where: str | None = None  # the line told in the source's own terms ("cell 7, line 4")

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    @property
    def departure(self) -> StageMatch | None:
        """The stage record of the first departure, if any."""
        return next((s for s in self.stages if s.departure), None)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-friendly data (arrays as nested lists; the case left out)."""
        return {"name": self.name, "status": self.status, "diagnosis": self.diagnosis,
                "stage": self.stage, "line": self.line, "variable": self.variable,
                "function": self.function, "variant": self.variant, "slip": self.slip,
                "file": self.file, "where": self.where,
                "parts": dict(self.parts),
                "warnings": list(self.warnings), "output": self.output,
                "stages": [s.to_dict() for s in self.stages]}


@dataclass
class LayersReport:
    """One FunctionResult per function the source defines; `error` when it cannot be loaded;
    `notes` about loading (stubbed course modules); `missing`: assignment names not found,
    with the similar name the file has."""

    source: str
    results: dict[str, FunctionResult] = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    advice: bool = True  # whether str() ends with how to save and explain a failing case
    others: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many functions of the file are in each state, every function counted once:
        the judged by status, "not judged" (its own helpers, names only similar to the
        assignment's), "absent" (assignment functions it does not define)."""
        counts = {"pass": 0, "fail": 0, "error": 0, "not implemented": 0}
        for result in self.results.values():
            counts[result.status] = counts.get(result.status, 0) + 1
        counts["not judged"] = len(self.others) + len(self.missing)
        counts["absent"] = len(self.absent)
        return counts

    def focus(self) -> str | None:
        """The function a reader looks at first (the one `save_case` saves and the page
        steps through): a failing backward with a traced case, then any failing function
        with one, then any function that does not pass, then a backward; None when empty."""
        results = list(self.results.values())

        def backward(name: str) -> bool:
            return "backward" in name or name.endswith("_loss")

        for wanted in (lambda r: r.status == "fail" and r.stages and backward(r.name),
                       lambda r: r.status == "fail" and r.stages,
                       lambda r: r.status == "fail" and r.case,
                       lambda r: not r.ok,
                       lambda r: backward(r.name)):
            found = next((r.name for r in results if wanted(r)), None)
            if found is not None:
                return found
        return results[0].name if results else None

    @property
    def ok(self) -> bool:
        """True when the source loads and every function it defines passes."""
        return self.error is None and bool(self.results) and all(
            r.ok for r in self.results.values())

    def save_case(self, path: str | os.PathLike) -> str | None:
        """Write the failing case of `focus()` (else of the first failing function) to an
        .npz file at exactly `path`, whole or not at all (inputs, the student's outputs,
        every correct stage value and gradient); its name, or None if none fails."""
        focus = self.focus()
        ordered = sorted(self.results.items(), key=lambda item: item[0] != focus)
        for name, result in ordered:
            if result.status == "fail" and result.case:
                arrays = {k: np.asarray(v) for k, v in result.case.items()}
                arrays["function"] = np.array(name)
                buffer = io.BytesIO()  # np.savez(path) would add ".npz" and write in place
                np.savez(buffer, **arrays)
                write_atomic(path, buffer.getvalue())
                return name
        return None

    def _repr_html_(self) -> str:
        """The verdicts as HTML (how Jupyter shows a report inline)."""
        from .inline import report_html
        return report_html(self)

    def _repr_markdown_(self) -> str:
        """The verdicts as a Markdown table (how Jupyter shows it)."""
        if self.error is not None:
            return f"**{shown(self.source)}** cannot be loaded: {shown(self.error)}"
        lines = [f"**{self.source}** against the staged graphs", "",
                 "| function | status | line | diagnosis |", "|---|---|---|---|"]
        for name, result in self.results.items():
            diagnosis = shown(result.diagnosis).replace("|", "\\|")
            lines.append(f"| {name} | {result.status} | {result.line or ''} | {diagnosis} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        # Every text the student's code could have chosen is escaped (`text.shown`): the
        # statuses, the summary and the layout are the checker's alone.
        lines = [f"checking {shown(self.source)} against the staged graphs"]
        lines += [f"note: {shown(note)}" for note in self.notes]
        if self.error is not None:
            lines.append(f"cannot load it: {shown(self.error)}")
            return "\n".join(lines)
        for name, similar in self.missing.items():
            lines.append(f"{name}: not found; did you mean {shown(similar)}? map it with "
                         f"--function {name}={shown(similar)}")
        if not self.results and not self.missing:
            lines.append("it defines none of: " + ", ".join(FUNCTIONS))
        width = max((len(name) for name in self.results), default=0)
        for name, result in self.results.items():
            stage = f" [stage {shown(result.stage)}]" if result.stage else ""
            lines.append(f"{name:<{width}}  {result.status.upper():<15}{stage} "
                         f"{shown(result.diagnosis)}")
            lines += [f"{'':<{width}}  warning: {shown(w)}" for w in result.warnings]
            if result.output:
                text = shown(result.output.rstrip("\n"), newlines=True).replace(
                    "\n", "\n" + " " * (width + 4) + "| ")
                lines.append(f"{'':<{width}}  it printed:\n{' ' * (width + 4)}| {text}")
        for name in self.others:
            lines.append(f"{shown(name):<{width}}  NOT JUDGED      not a function of the "
                         f"assignment (a helper of yours?)")
        counts = self.counts()
        rest = ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("pass", "absent") and v)
        savable = any(r.status == "fail" and r.case for r in self.results.values())
        lines.append(f"{counts['pass']} of {len(self.results)} functions pass"
                     + (f" ({rest})" if rest else "")
                     + (f"; {counts['absent']} of the assignment's not defined"
                        if counts["absent"] else "")
                     + ("" if not (self.advice and savable) else
                        "; `tinygrad-bn check --save-case case.npz` then `tinygrad-bn explain "
                        "--values --load case.npz` shows every stage on the same data"))
        return "\n".join(lines)


def check_layers(source: Any, *, only: Iterable[str] | None = None, seed: int = 0,
                 timeout: float = 60.0, memory: int | None = DEFAULT_MEMORY,
                 functions: dict[str, str] | None = None) -> LayersReport:
    """Judge every function of the assignment `source` defines (a path to a .py file or a
    notebook, a module, or a dict of functions) against the staged graphs.

    only: the names to check (default all the source defines); timeout: seconds each
    function may take; memory: bytes of address space each may add to what the calling process
    maps (None: no limit);
    functions: assignment name -> the name it has in the source
    ({"batchnorm_forward": "batchnormForward"})."""
    mapping = dict(functions or {})
    for key in mapping:
        if key not in FUNCTIONS:
            raise ValueError(f"functions: expected keys among {', '.join(FUNCTIONS)}, got {key!r}")
    if isinstance(source, (str, os.PathLike)) and pathlib.Path(source).suffix == ".ipynb" \
            and pathlib.Path(source).is_file():
        from .notebook import check_notebook
        return check_notebook(pathlib.Path(source), only=only, seed=seed, timeout=timeout,
                              memory=memory, functions=functions)
    if isinstance(source, (str, os.PathLike)):
        path = resolve_source(pathlib.Path(source))
        label = str(path)
        loader = student_loader(path.resolve(), mapping)
    elif isinstance(source, types.ModuleType):
        label = getattr(source, "__file__", None) or source.__name__
        loader = from_namespace(vars(source), mapping)
    elif isinstance(source, dict):
        label = "the given functions"
        loader = from_namespace(source, mapping)
    else:
        raise TypeError(f"source: expected a path, a module or a dict of functions, got "
                        f"{type(source).__name__}")
    wanted = list(FUNCTIONS) if only is None else list(only)
    for name in wanted:
        if name not in FUNCTIONS:
            raise ValueError(f"only: expected names among {', '.join(FUNCTIONS)}, got {name!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
            not math.isfinite(timeout) or not 0 < timeout <= 86400:
        raise ValueError(f"timeout: expected seconds in (0, 86400], got {timeout!r}")
    report = LayersReport(source=label)
    loaded = run_isolated(lambda: loaded_names(loader), timeout, memory)
    if loaded.failure is not None:
        report.error = _process_failure_text(loaded, timeout, memory, loading=True)
        return report
    info = _names_from(loaded.value)
    if info is None:
        report.error = "the box's list of the file's functions cannot be read"
        return report
    if info.get("syntax"):
        report.error = info["syntax"]
        return report
    if info.get("error"):
        report.error = info["error"]
        return report
    report.notes = list(info["notes"])
    report.missing = {k: v for k, v in info["missing"].items() if k in wanted}
    report.others = list(info.get("others", []))
    report.absent = [n for n in wanted if n not in info["defined"] and n not in report.missing]
    defined = info["defined"]
    for name in (n for n in FUNCTIONS if n in wanted and n in defined):
        if name in NORMALIZATION_NAMES:
            def judge(functions: dict, name: str = name) -> Any:
                return judge_function(lambda: (functions, [], {}), name, seed)
        else:
            def judge(functions: dict, name: str = name) -> Any:
                return judge_entry(functions, name, seed)
        verdict, outcome, misfit = judge_in_box(loader, judge, timeout, memory)
        if outcome.failure is not None:
            result = FunctionResult(name, "error",
                                    _process_failure_text(outcome, timeout, memory, name=name))
        elif misfit is not None:
            result = FunctionResult(name, "error", f"cannot be judged: {misfit}")
        else:
            result = _result_from(verdict)
        result.output = outcome.output
        if isinstance(source, (str, os.PathLike)):
            result.diagnosis = _lines_of_other_file(result.diagnosis, result.file, path)
        result.diagnosis = clean(result.diagnosis)  # texts of the student's are written out
        result.warnings = [clean(w) for w in result.warnings]
        report.results[name] = result
    return report


def _lines_of_other_file(text: str, file: str, checked: pathlib.Path) -> str:
    """"line 50" -> "line 50 of layers.py" when the function lives in another file than the
    one checked (a fc_net.py importing layers.py)."""
    import re
    if not file or os.path.realpath(file) == os.path.realpath(checked):
        return text
    name = os.path.basename(file)
    return re.sub(r"\b([Ll]ines? \d+)(?! of )", lambda m: f"{m.group(1)} of {name}", text)


def _names_from(info: Any) -> dict[str, Any] | None:
    """The box's account of the file's names, checked (None when malformed)."""
    if not isinstance(info, dict):
        return None
    if isinstance(info.get("syntax"), str) or isinstance(info.get("error"), str):
        return {k: clean(info[k])[:2000] for k in ("syntax", "error")
                if isinstance(info.get(k), str)}
    defined, notes, missing = info.get("defined"), info.get("notes"), info.get("missing")
    if not isinstance(defined, list) or not isinstance(notes, list) or \
            not isinstance(missing, dict):
        return None
    others = info.get("others", [])
    return {"defined": [n for n in defined if n in FUNCTIONS],
            "others": [clean(n)[:200] for n in others if isinstance(n, str)][:200]
            if isinstance(others, list) else [],
            "notes": [clean(n)[:500] for n in notes if isinstance(n, str)][:50],
            "missing": {k: clean(v)[:200] for k, v in missing.items()
                        if k in FUNCTIONS and isinstance(v, str)}}


def _process_failure_text(outcome: Any, timeout: float, memory: int | None,
                          name: str | None = None, loading: bool = False) -> str:
    return clean(_failure_text(outcome, timeout, memory, name, loading))


def _failure_text(outcome: Any, timeout: float, memory: int | None, name: str | None,
                  loading: bool) -> str:
    running = outcome.running or name or "the file's top level"
    what = "loading it" if loading else f"while running {running}"
    if outcome.failure == "timeout":
        if loading:
            return (f"loading it timed out after {timeout:g} s (while running "
                    f"{outcome.running or 'its top level'})")
        return f"timed out after {timeout:g} s while running {running} (an endless loop? a sleep?)"
    if outcome.failure == "memory":
        return (f"your code used more than the memory budget ({memory / 2**30:.3g} GiB across "
                f"all its processes) {what}")
    if outcome.failure == "signal":
        extra = " (the memory limit?)" if outcome.signal_name == "SIGKILL" and memory else ""
        return f"your code was killed by {outcome.signal_name} {what}{extra}"
    if outcome.failure == "exit":
        return (f"your code ended the process (exit code {outcome.code}) {what}: os._exit or "
                f"a crash in compiled code?")
    if outcome.failure == "raised":
        return f"the check itself failed {what}: {outcome.error}"
    return f"{outcome.error} {what}"


def _result_from(data: dict[str, Any]) -> FunctionResult:
    stages = [StageMatch(**{k: (np.asarray(v) if k in ("value", "expected") and v is not None
                                else v) for k, v in s.items()}) for s in data.pop("stages", [])]
    case = {k: np.asarray(v) for k, v in data.pop("case", {}).items()}
    return FunctionResult(**data, stages=stages, case=case)


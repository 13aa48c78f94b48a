"""A class's submissions checked at once: each file judged as `check_layers` judges one (every
function in its own box), several files in parallel (one worker process per core, at most),
progress as each file ends, a class summary, and the results as JSON or as Gradescope's
`results.json`. One bad submission never stops the batch: a file that cannot be loaded, or a
worker that dies, is that file's error.

    batch = check_many(["a/layers.py", "b/layers.py"], workers=2)
    print(batch.summary_text()); batch.to_json(); batch.gradescope()
"""

from __future__ import annotations

import json
import os
import pathlib
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from .layers import DEFAULT_MEMORY, LayersReport, check_layers
from .table import ASSIGNMENT_NAMES
from .text import shown

__all__ = ["BatchReport", "check_many", "submissions", "JSON_SCHEMA", "STATUSES"]

STATUSES = ("pass", "fail", "error", "not implemented", "absent")

# The schema of `BatchReport.to_json()` (JSON Schema, draft 2020-12).
_RESULT = {
    "type": "object",
    "required": ["status", "diagnosis", "line", "variable", "function", "slip", "where",
                 "warnings"],
    "properties": {
        "status": {"enum": ["pass", "fail", "error", "not implemented"]},
        "diagnosis": {"type": "string"},
        "line": {"type": ["integer", "null"]},
        "variable": {"type": ["string", "null"]},
        "function": {"type": ["string", "null"]},
        "slip": {"type": ["string", "null"]},
        "where": {"type": ["string", "null"]},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tinygrad-bn check results",
    "type": "object",
    "required": ["version", "files", "summary"],
    "properties": {
        "version": {"const": 1},
        "files": {"type": "array", "items": {
            "type": "object",
            "required": ["path", "error", "notes", "functions", "not_judged", "missing"],
            "properties": {
                "path": {"type": "string"},
                "error": {"type": ["string", "null"]},
                "notes": {"type": "array", "items": {"type": "string"}},
                "functions": {"type": "object", "additionalProperties": _RESULT},
                "not_judged": {"type": "array", "items": {"type": "string"}},
                "missing": {"type": "object", "additionalProperties": {"type": "string"}},
            }}},
        "summary": {
            "type": "object", "required": ["files", "unreadable", "functions", "slips"],
            "properties": {
                "files": {"type": "integer"},
                "unreadable": {"type": "integer"},
                "functions": {"type": "object", "additionalProperties": {
                    "type": "object", "required": list(STATUSES),
                    "properties": {s: {"type": "integer"} for s in STATUSES}}},
                "slips": {"type": "array", "items": {
                    "type": "object", "required": ["function", "slip", "files"],
                    "properties": {"function": {"type": "string"}, "slip": {"type": "string"},
                                   "files": {"type": "integer"}}}},
            }},
    },
}


@dataclass
class BatchReport:
    """One LayersReport per submission, in the order given."""

    reports: list[LayersReport] = field(default_factory=list)
    names: tuple[str, ...] = ASSIGNMENT_NAMES  # the functions asked for (all, or --only's)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per function of the assignment: how many files pass, fail, ... or lack it."""
        table = {name: dict.fromkeys(STATUSES, 0) for name in self.names}
        for report in self.reports:
            if report.error is not None:
                continue
            for name in self.names:
                result = report.results.get(name)
                table[name][result.status if result is not None else "absent"] += 1
        return table

    def slips(self) -> list[tuple[str, str, int]]:
        """(function, slip, number of files) for every named slip, most common first."""
        seen = Counter((name, result.slip or result.variant) for report in self.reports
                       for name, result in report.results.items()
                       if result.slip or result.variant)
        return sorted(((f, s, n) for (f, s), n in seen.items()), key=lambda t: (-t[2], t[0], t[1]))

    def summary_text(self, top: int = 10) -> str:
        unreadable = sum(r.error is not None for r in self.reports)
        lines = [f"class summary: {len(self.reports)} files"
                 + (f" ({unreadable} cannot be loaded)" if unreadable else "")]
        width = max(len(n) for n in self.names)
        heads = ("pass", "fail", "error", "not impl.", "absent")
        lines.append(f"{'function':<{width}}  " + "  ".join(f"{h:>9}" for h in heads))
        for name, row in self.counts().items():
            lines.append(f"{name:<{width}}  " + "  ".join(f"{row[s]:>9}" for s in STATUSES))
        slips = self.slips()[:top]
        if slips:
            lines.append("most common slips:")
            lines += [f"  {n:>3} {'file ' if n == 1 else 'files'}  {f}: {shown(s)}" for f, s, n in slips]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Every verdict, line, variable and slip (schema: `JSON_SCHEMA`)."""
        files = []
        for report in self.reports:
            files.append({
                "path": report.source, "error": report.error, "notes": list(report.notes),
                "functions": {name: {"status": r.status, "diagnosis": r.diagnosis,
                                     "line": r.line, "variable": r.variable,
                                     "function": r.function, "slip": r.slip or r.variant,
                                     "where": r.where, "warnings": list(r.warnings)}
                              for name, r in report.results.items()},
                "not_judged": list(report.others), "missing": dict(report.missing)})
        return {"version": 1, "files": files, "summary": {
            "files": len(self.reports),
            "unreadable": sum(r.error is not None for r in self.reports),
            "functions": self.counts(),
            "slips": [{"function": f, "slip": s, "files": n} for f, s, n in self.slips()]}}

    def gradescope(self) -> dict[str, Any]:
        """Gradescope's results.json: one test per function of the assignment (and file, when
        there are several), score 1 for a pass out of 1."""
        tests = []
        several = len(self.reports) > 1
        for report in self.reports:
            prefix = f"{report.source}: " if several else ""
            for name in self.names:
                result = report.results.get(name)
                if report.error is not None:
                    output = f"the file cannot be loaded: {report.error}"
                elif result is None:
                    output = (f"not found; did you mean {report.missing[name]}?"
                              if name in report.missing else "not defined in the file")
                else:
                    output = f"{result.status.upper()}: {result.diagnosis}"
                    output += "".join(f"\nwarning: {w}" for w in result.warnings)
                passed = result is not None and result.ok
                tests.append({"name": prefix + name, "score": 1.0 if passed else 0.0,
                              "max_score": 1.0, "output": output})
        return {"score": sum(t["score"] for t in tests), "tests": tests}


def submissions(paths: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
    """The files to check: each path given, and for a folder every `layers.py` and notebook
    below it (sorted); duplicates once."""
    found: list[pathlib.Path] = []
    for path in map(pathlib.Path, paths):
        try:
            folder = path.is_dir()
        except OSError:  # judged as a file: its row says why it cannot be read
            folder = False
        if folder:
            found += sorted(p for p in path.rglob("*")
                            if p.is_file() and (p.name == "layers.py" or p.suffix == ".ipynb")
                            and ".ipynb_checkpoints" not in p.parts)
        else:
            found.append(path)
    unique: list[pathlib.Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def _one(path: str, options: dict[str, Any]) -> LayersReport:
    try:
        return check_layers(path, **options)
    except Exception as error:  # noqa: BLE001 - one bad submission never stops the batch
        return LayersReport(source=path, error=f"{type(error).__name__}: {error}")


def check_many(paths: Iterable[str | os.PathLike], *, workers: int | None = None,
               progress: Callable[[int, int, LayersReport], None] | None = None,
               seed: int = 0, timeout: float = 60.0, memory: int | None = DEFAULT_MEMORY,
               only: Iterable[str] | None = None) -> BatchReport:
    """Check every submission (see `submissions`), `workers` files at a time (default: the
    cores this process may use); progress(done, total, report) after each file."""
    files = submissions(paths)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected a positive int, got {workers!r}")
    only = None if only is None else list(only)
    options = {"seed": seed, "timeout": timeout, "memory": memory, "only": only}
    reports: dict[int, LayersReport] = {}
    if workers == 1 or len(files) <= 1:
        for index, path in enumerate(files):
            reports[index] = _one(str(path), options)
            if progress is not None:
                progress(len(reports), len(files), reports[index])
    else:
        import multiprocessing
        # fork, as the box itself does: a script or notebook calling this is not re-run
        # in the workers (forkserver and spawn would import the caller's main module)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(files)), mp_context=context) as pool:
            futures = {pool.submit(_one, str(path), options): index
                       for index, path in enumerate(files)}
            for future in as_completed(futures):
                index = futures[future]
                try:
                    reports[index] = future.result()
                except Exception as error:  # noqa: BLE001 - the worker itself died
                    reports[index] = LayersReport(source=str(files[index]),
                                                  error=f"the check's worker failed: {error}")
                if progress is not None:
                    progress(len(reports), len(files), reports[index])
    names = ASSIGNMENT_NAMES if only is None else tuple(n for n in ASSIGNMENT_NAMES if n in only)
    return BatchReport([reports[i] for i in range(len(files))], names)


def write_json(data: dict[str, Any], path: str | os.PathLike) -> None:
    """`data` as JSON at `path`, whole or not at all."""
    from ..files import write_atomic
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())

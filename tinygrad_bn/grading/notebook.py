"""A notebook checked like a layers.py: its code cells, in order, up to the last one defining a
function of the assignment (or importing `cs231n.layers`), become one Python file the box loads;
of those cells only what defines something runs (imports, functions, classes, assignments of
constants), so cells that load data, train or plot are not needed. A line of that file is told
as the notebook's "cell 7, line 4" (cells counted from 1 among all cells, as Jupyter shows them).

    program = notebook_program("assignment.ipynb")
    program.source, program.where(12)  -> "cell 3, line 4"
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

from .table import ASSIGNMENT_NAMES

__all__ = ["NotebookProgram", "notebook_program", "MAX_NOTEBOOK_BYTES"]

MAX_NOTEBOOK_BYTES = 64 * 2**20


@dataclass
class NotebookProgram:
    """The file made of a notebook's cells: `source`, and for each of its lines the (cell,
    line) it came from (None for the lines the checker adds)."""

    path: pathlib.Path
    source: str
    origin: list[tuple[int, int] | None] = field(default_factory=list)
    defined: list[str] = field(default_factory=list)
    imports_layers: bool = False

    def where(self, line: int) -> str | None:
        """"cell 7, line 4" for a line of `source` (1-based), or None."""
        if not 1 <= line <= len(self.origin) or self.origin[line - 1] is None:
            return None
        cell, own = self.origin[line - 1]
        return f"cell {cell}, line {own}"

    def retell(self, text: str) -> str:
        """Every "line N" of a message told as the notebook's "cell C, line L"."""
        def told(match: re.Match) -> str:
            where = self.where(int(match.group(2)))
            if where is None:
                return match.group(0)
            return ("C" if match.group(1) == "L" else "c") + where[1:]
        return re.sub(r"\b([Ll])ine (\d+)", told, text)


def _cells(path: pathlib.Path) -> list[tuple[int, str]]:
    """(cell number, source) of each code cell, counted among all cells from 1."""
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"path: a notebook of at most {MAX_NOTEBOOK_BYTES // 2**20} MiB, got "
                         f"{size / 2**20:.1f} MiB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"path: expected a notebook (JSON), got a file that is not: {error}") \
            from None
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise ValueError("path: expected a notebook with a list of cells, got none")
    found = []
    for number, cell in enumerate(cells, 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        text = cell.get("source", "")
        found.append((number, "".join(text) if isinstance(text, list) else str(text)))
    return found


def _kept(statement: ast.stmt) -> bool:
    """What defines something and computes nothing heavy: imports, functions, classes,
    assignments of constants."""
    if isinstance(statement, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef,
                              ast.AsyncFunctionDef)):
        return True
    if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
        return not any(isinstance(n, (ast.Call, ast.Await, ast.Yield)) for n in
                       ast.walk(statement.value))
    return False


def _cleaned(text: str) -> str:
    """IPython's magics and shell escapes (%, !) made comments, keeping the line count."""
    return "\n".join(("# " + line) if line.lstrip().startswith(("%", "!", "?")) else line
                     for line in text.splitlines())


def notebook_program(path: str | os.PathLike) -> NotebookProgram:
    """The Python file a notebook's defining cells make (see the module's docstring)."""
    path = pathlib.Path(path)
    program = NotebookProgram(path, "")
    lines: list[str] = [f"import sys; sys.path.insert(0, {str(path.resolve().parent)!r})"]
    origin: list[tuple[int, int] | None] = [None]
    chunks: list[tuple[int, ast.Module, list[str]]] = []
    for number, text in _cells(path):
        text = _cleaned(text)
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue  # a cell of something else (IPython syntax this does not know)
        chunks.append((number, tree, text.splitlines()))
    last = 0
    for index, (_, tree, _) in enumerate(chunks):
        for statement in tree.body:
            if isinstance(statement, ast.FunctionDef) and statement.name in ASSIGNMENT_NAMES:
                last = index + 1
            if isinstance(statement, ast.ImportFrom) and statement.module and \
                    statement.module.endswith("layers") and "cs231n" in statement.module:
                last = index + 1
                program.imports_layers = True
    for number, tree, cell_lines in chunks[:last]:
        for statement in tree.body:
            if not _kept(statement):
                continue
            if isinstance(statement, ast.FunctionDef) and statement.name in ASSIGNMENT_NAMES:
                program.defined.append(statement.name)
            first, end = statement.lineno, statement.end_lineno or statement.lineno
            if statement.decorator_list if isinstance(statement, ast.FunctionDef) else False:
                first = min(d.lineno for d in statement.decorator_list)
            if isinstance(statement, (ast.Import, ast.ImportFrom)) and not (
                    isinstance(statement, ast.ImportFrom) and statement.module
                    and statement.module.startswith("cs231n")):
                # a package the checker's machine lacks (matplotlib, ...) is not needed
                lines.append("try:")
                origin.append(None)
                for i in range(first, end + 1):
                    lines.append("    " + cell_lines[i - 1])
                    origin.append((number, i))
                lines += ["except ImportError:", "    pass"]
                origin += [None, None]
                continue
            for i in range(first, end + 1):
                lines.append(cell_lines[i - 1])
                origin.append((number, i))
    program.source = "\n".join(lines) + "\n"
    program.origin = origin
    return program


def describe(program: NotebookProgram) -> Any:
    """A note for the report: what of the notebook was used."""
    names = ", ".join(program.defined) or "none"
    text = f"the notebook's code cells define {names}"
    if program.imports_layers:
        text += "; the rest comes from the cs231n.layers it imports"
    return text


def check_notebook(path: pathlib.Path, **options: Any) -> Any:
    """`check_layers` on a notebook: its program written to a private folder, checked, and
    every line of the report told as the notebook's cell and line."""
    import shutil
    import tempfile

    from .layers import check_layers
    program = notebook_program(path)
    folder = tempfile.mkdtemp(prefix="tinygrad-bn-notebook-")
    try:
        file = pathlib.Path(folder) / "notebook_cells.py"
        file.write_text(program.source, encoding="utf-8")
        report = check_layers(file, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report.source = str(path)
    report.notes.insert(0, describe(program))
    if report.error is not None:
        report.error = program.retell(report.error)
    for result in report.results.values():
        holder = result.function or result.name
        if holder in program.defined or result.status == "error":
            result.diagnosis = program.retell(result.diagnosis)
            if result.line is not None and holder in program.defined:
                result.where = program.where(result.line)
    return report

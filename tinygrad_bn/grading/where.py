"""The line of a student's function where a known slip departs, by the rule its table entry
names. The rules read the traced snapshots (`trace.py`) and the function's own source; they
know no layer.

returns    the last line writing the wrong output (dx[...] = ..., loss = ...)
creation   the line creating the output array (its shape is the slip)
size       the size assignment feeding the output's wrong axis (W_out = ... H ...)
float-size the size computed with '/' that the raising line reads
nonfinite  the first line whose value is inf or nan
draw       the line drawing the random numbers
part       the first array of an item's rank that is none of the correct items (a window)
raised     the line the error was raised on
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["source_of", "locate", "raised_line", "returned_names"]


def source_of(function: Any) -> tuple[str | None, int]:
    """(source, first line) of a student's function, or its stand-in's recorded ones."""
    if hasattr(function, "recorded_source"):
        return function.recorded_source, int(function.first_line)
    try:
        lines, first = inspect.getsourcelines(function)
    except (OSError, TypeError):
        return None, 0
    return "".join(lines), first


def _tree(source: str | None) -> ast.AST | None:
    if source is None:
        return None
    try:
        return ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return None


def raised_line(error: str | None) -> int | None:
    """The line an error's text names ("... (line 12: ...)")."""
    found = re.findall(r"\(line (\d+)(?::| in | of )", error or "")
    return int(found[-1]) if found else None


def returned_names(source: str | None) -> list[str | None]:
    """The names the function's last return statement returns, in order."""
    tree = _tree(source)
    if tree is None:
        return []
    returns = [n for n in ast.walk(tree) if isinstance(n, ast.Return) and n.value is not None]
    if not returns:
        return []
    value = max(returns, key=lambda n: n.lineno).value
    items = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [value]
    return [item.id if isinstance(item, ast.Name) else None for item in items]


def _assignments(tree: ast.AST, name: str, first: int) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name) and leaf.id == name:
                    lines.append(node.lineno + first - 1)
    return sorted(lines)


def _augmented(tree: ast.AST | None, name: str, first: int) -> list[int]:
    if tree is None:
        return []
    return sorted(n.lineno + first - 1 for n in ast.walk(tree) if isinstance(n, ast.AugAssign)
                  and any(isinstance(leaf, ast.Name) and leaf.id == name
                          for leaf in ast.walk(n.target)))


def _statement_at(tree: ast.AST, line: int, first: int) -> ast.AST | None:
    """The statement on `line`; of a loop or branch, only its header (iter, test)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or node.lineno + first - 1 != line:
            continue
        if isinstance(node, (ast.For, ast.AsyncFor)):
            return node.iter
        if isinstance(node, (ast.While, ast.If)):
            return node.test
        if isinstance(node, (ast.With, ast.FunctionDef)):
            continue
        return node
    return None


def _snapshots(seen: Any, function: str) -> list[Any]:
    return [s for s in seen.snapshots if s.function == function and not s.parameter]


def locate(rule: str, seen: Any, student: Any, name: str, output: int,
           part: Callable[[Any], np.ndarray] | None = None) -> tuple[int | None, str | None]:
    """(line, variable) of `student` (function `name`) by `rule`; (None, None) if not found."""
    source, first = source_of(student)
    tree = _tree(source)
    own = _snapshots(seen, name)
    names = returned_names(source)
    target = names[output] if output < len(names) else None
    if rule == "raised":
        return raised_line(seen.error), None
    if rule == "returns" and target is not None:
        writes = [s for s in own if s.variable == target]
        lines = _assignments(tree, target, first) if tree is not None else []
        if writes:
            # an in-place operation that changed nothing visible (dx /= 1) leaves no snapshot
            later = [n for n in _augmented(tree, target, first) if n > writes[-1].line]
            return (later[-1] if later else writes[-1].line), target
        return (lines[-1], target) if lines else (None, None)
    if rule in ("creation", "size"):
        if target is None:
            return None, None
        made = [s for s in own if s.variable == target]
        if not made:
            return None, None
        line = made[0].line
        if rule == "creation" or tree is None:
            return line, target
        return _size_line(tree, line, first, made[0].value.shape, seen) or (line, target)
    if rule == "float-size" and tree is not None:
        line = raised_line(seen.error)
        statement = _statement_at(tree, line, first) if line is not None else None
        if statement is None:
            return line, None
        read = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name)}
        candidates = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and node.lineno + first - 1 < line and any(
                    isinstance(op, ast.BinOp) and isinstance(op.op, ast.Div)
                    for op in ast.walk(node.value)):
                for target_node in node.targets:
                    if isinstance(target_node, ast.Name) and target_node.id in read:
                        candidates.append((node.lineno + first - 1, target_node.id))
        return max(candidates) if candidates else (line, None)
    if rule == "nonfinite":
        for s in own:
            if s.value.size and not np.all(np.isfinite(s.value)):
                return s.line, s.variable
        return None, None
    if rule == "draw" and tree is not None:
        for node in sorted((n for n in ast.walk(tree) if isinstance(n, ast.stmt)
                            and not isinstance(n, (ast.If, ast.For, ast.While, ast.FunctionDef))),
                           key=lambda n: n.lineno):
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and "random" in ast.unparse(call.func) and \
                        not ast.unparse(call.func).endswith("seed"):
                    variable = None
                    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                        variable = node.targets[0].id
                    return node.lineno + first - 1, variable
        return None, None
    if rule == "part" and part is not None:
        items = part(seen.case)
        shape = items.shape[1:]
        for s in own:
            value = s.value
            if value.ndim != len(shape) or value.shape[0] != shape[0]:
                continue
            if value.shape == shape and np.any(np.all(np.isclose(items, value[None]).reshape(
                    len(items), -1), axis=1)):
                continue
            return s.line, s.variable
        return None, None
    return None, None


def _size_line(tree: ast.AST, line: int, first: int, shape: tuple[int, ...],
               seen: Any) -> tuple[int, str] | None:
    """The assignment of the size name at the wrong axis of the array created on `line`."""
    expected = np.shape(seen.expected[0]) if seen.expected else ()
    wrong = [axis for axis, (a, b) in enumerate(zip(shape, expected)) if a != b]
    statement = _statement_at(tree, line, first)
    if not wrong or statement is None:
        return None
    for node in ast.walk(statement):
        if isinstance(node, ast.Tuple) and len(node.elts) == len(shape):
            element = node.elts[wrong[0]]
            if isinstance(element, ast.Name):
                lines = [n for n in _assignments(tree, element.id, first) if n < line]
                if lines:
                    return lines[-1], element.id
    return None

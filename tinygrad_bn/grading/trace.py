"""A line tracer for a student's function: the arrays each line assigns, and what they depend on.

    tracer = LineTracer("layers.py")
    result = tracer.run(batchnorm_backward, dout, cache)
    tracer.snapshots      # Snapshot(line, variable, value, deps, ...) in execution order

`sys.settrace` reports each line before it runs; the locals are compared after it ran (at
the next line or return event of the same frame), and every float array that is new or has
new contents becomes a snapshot. Which earlier snapshots a line depends on comes from the
names its statement reads (its AST), the latest version of each; a call into another traced
function links the callee's parameters to the caller's line and the caller's line to what
the callee returned. Only frames of the student's file are traced.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Snapshot", "LineTracer", "MAX_SNAPSHOTS"]

MAX_SNAPSHOTS = 20_000  # a loop over every sample stops being traced beyond this


@dataclass
class Snapshot:
    """One array a line of the student's file assigned (or changed in place)."""

    index: int
    function: str
    line: int
    variable: str
    value: np.ndarray
    deps: list[int] = field(default_factory=list)
    parameter: bool = False  # the function's argument, as it came in


@dataclass
class _Frame:
    function: str
    line: int | None = None
    arrays: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    call_deps: list[int] = field(default_factory=list)   # what the caller's line read
    pending: list[int] = field(default_factory=list)     # what callees returned on this line
    caller: _Frame | None = None


class LineTracer:
    """Collects Snapshots of every function defined in `filename` while `run` runs."""

    def __init__(self, filename: str, source: str | None = None) -> None:
        self.filename = filename
        self.snapshots: list[Snapshot] = []
        self.truncated = False
        self.returned: dict[str, list[int]] = {}  # function -> snapshots its last return read
        self._frames: dict[int, _Frame] = {}
        self._statement, self._reads = _statements(source if source is not None else
                                                   _read(filename))

    def run(self, function: Callable, *args: Any) -> Any:
        """function(*args) under the tracer (exceptions propagate)."""
        previous = sys.gettrace()
        sys.settrace(self._global)
        try:
            return function(*args)
        finally:
            sys.settrace(previous)
            self._frames.clear()

    def reads(self, line: int) -> set[str]:
        return self._reads.get(self._statement.get(line, line), set())

    # --- the trace functions ----------------------------------------------------------
    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        if event != "call" or frame.f_code.co_filename != self.filename or self.truncated:
            return None
        caller = self._frames.get(id(frame.f_back)) if frame.f_back is not None else None
        state = _Frame(frame.f_code.co_name, caller=caller)
        if caller is not None and caller.line is not None:
            state.call_deps = [caller.versions[n] for n in self.reads(caller.line)
                               if n in caller.versions]
        self._frames[id(frame)] = state
        self._changed(state, frame, parameter=True)
        return self._local

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        state = self._frames.get(id(frame))
        if state is None or self.truncated:
            return None
        if event == "line":
            self._changed(state, frame)
            state.line = self._statement.get(frame.f_lineno, frame.f_lineno)
        elif event == "return":
            self._changed(state, frame)
            if state.line is not None:
                returned = [state.versions[n] for n in self.reads(state.line) if n in state.versions]
                self.returned[state.function] = returned
                if state.caller is not None:
                    state.caller.pending.extend(returned)
            del self._frames[id(frame)]
        return self._local

    def _changed(self, state: _Frame, frame: Any, parameter: bool = False) -> None:
        """Snapshot the float arrays the last line made or changed."""
        deps = list(state.call_deps) if parameter else (
            [state.versions[n] for n in self.reads(state.line) if n in state.versions]
            if state.line is not None else [])
        deps += state.pending
        state.pending = []
        for name, value in list(frame.f_locals.items()):
            if isinstance(value, np.generic) and value.dtype.kind == "f":
                value = np.asarray(value)
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.size > 10**6:
                continue
            seen = state.arrays.get(name)
            if seen is not None and seen[0] == id(value) and seen[1].shape == value.shape \
                    and np.array_equal(seen[1], value, equal_nan=True):
                continue
            if seen is not None and seen[1].shape == value.shape and \
                    np.array_equal(seen[1], value, equal_nan=True):
                state.arrays[name] = (id(value), seen[1])
                continue  # a new object with the same contents (e.g. a copy)
            copy = np.array(value, dtype=np.float64)
            state.arrays[name] = (id(value), copy)
            own = [d for d in deps if d != state.versions.get(name, -1)] if parameter else deps
            snapshot = Snapshot(len(self.snapshots), state.function,
                                state.line if state.line is not None else frame.f_code.co_firstlineno,
                                name, copy, sorted(set(own)), parameter)
            if name in state.versions and not parameter and name in self.reads(state.line or -1):
                snapshot.deps = sorted(set(snapshot.deps) | {state.versions[name]})
            elif name in state.versions:  # changed in place (dx[:, c] = ...): the old version
                snapshot.deps = sorted(set(snapshot.deps) | {state.versions[name]})
            self.snapshots.append(snapshot)
            state.versions[name] = snapshot.index
            if len(self.snapshots) >= MAX_SNAPSHOTS:
                self.truncated = True
                return


def _read(filename: str) -> str:
    try:
        with open(filename, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def _statements(source: str) -> tuple[dict[int, int], dict[int, set[str]]]:
    """line -> first line of the simple statement (or compound header) it belongs to, and
    first line -> the names that statement reads."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}, {}
    statement: dict[int, int] = {}
    reads: dict[int, set[str]] = {}

    def names(nodes: list[ast.AST]) -> set[str]:
        found = set()
        for node in nodes:
            for child in ast.walk(node):
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
                    found.add(child.id)
        return found

    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, (ast.For, ast.AsyncFor)):
            header = [node.iter, node.target]
        elif isinstance(node, (ast.If, ast.While)):
            header = [node.test]
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            header = list(node.items)
        elif isinstance(node, ast.Try):
            header = []
        else:
            header = [node]
        end = node.end_lineno or node.lineno
        if header is not None and not isinstance(node, (ast.For, ast.AsyncFor, ast.If, ast.While,
                                                        ast.With, ast.AsyncWith, ast.Try)):
            for line in range(node.lineno, end + 1):
                statement[line] = node.lineno
        else:
            statement.setdefault(node.lineno, node.lineno)
        read = names(header)
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            read.add(node.target.id)
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:  # x[i] = ... reads x (it keeps the other entries)
                for child in ast.walk(target):
                    if isinstance(child, ast.Subscript):
                        read |= names([child.value])
        reads[node.lineno] = reads.get(node.lineno, set()) | read
    return statement, reads

"""Which line of the student's code departs: traced re-runs of a wrong forward or backward
whose arrays are matched against the catalogue (`locate.py`), and the line returning a value
of the wrong shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..check.gradcheck import scaled_error
from ..norm import NormSpec
from .assignment import (
    FORWARD_OF,
    GRAD_NAMES,
    MOMENTUM,
    TOLERANCE,
    bn_param_for,
    call_backward,
    call_forward,
    case_inputs,
    running_start,
    saved_case,
    seeded_bn_param,
    staged_out,
    student_file,
)
from .catalogue import build_catalogue, build_test_catalogue
from .locate import locate_departure, stage_records
from .trace import LineTracer

__all__ = ["shape_line", "grad_line", "assigned_text", "test_mode_departure", "forward_departure",
           "trace_student_backward"]


def shape_line(forward: Callable, name: str, kind: str, seed: int, result: dict[str, Any]) -> str:
    """For an output in the wrong shape: the first line of the forward that makes an array
    with more axes than x, or else the line of the returned out."""
    filename = student_file(forward)
    if filename is None:
        return ""
    spec, x, gamma, beta, _ = case_inputs(kind, seed)
    tracer = LineTracer(filename)
    try:
        out, _ = call_forward(forward, name, kind, x, gamma, beta, bn_param_for(kind), tracer)
    except Exception:  # noqa: BLE001 - judged already; the trace only adds a line
        return ""
    axes = max(x.ndim, spec.grouped(x).ndim)  # group norm's (N, G, C // G, H, W) is fine
    first = next((s for s in tracer.snapshots if not s.parameter and s.value.ndim > axes), None)
    if first is None:
        index = _returned_index(tracer, forward, np.asarray(out, np.float64), "out")
        first = None if index is None else tracer.snapshots[index]
    if first is None:
        return ""
    result.update(line=first.line, variable=first.variable, function=first.function)
    hint = ""
    if "gamma" in tracer.reads(first.line) or "beta" in tracer.reads(first.line):
        hint = (f"; gamma and beta come in shape {gamma.shape}: index or expand them as if "
                f"they were {(gamma.size,)} and they gain axes")
    return (f". Line {first.line}, `{first.variable}` makes shape {first.value.shape}"
            f"{' (more axes than x)' if first.value.ndim > axes else ''}{hint}")


@dataclass
class _TracedRun:
    """The student's forward and backward run again on the checker's case, under the tracer."""

    spec: NormSpec
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    dout: np.ndarray
    tracer: LineTracer
    out: Any
    split: int  # tracer.snapshots[:split] are the forward's lines (when it was traced)
    raw: Any


def _traced_run(backward: Callable, forward: Callable, name: str, kind: str, seed: int,
                trace_forward: bool) -> _TracedRun | None:
    """None where the backward is not in a file or fails (it was judged already; the trace
    only adds a line)."""
    filename = student_file(backward)
    if filename is None:
        return None
    spec, x, gamma, beta, dout = case_inputs(kind, seed)
    tracer = LineTracer(filename)
    try:
        out, cache = call_forward(forward, FORWARD_OF[kind], kind, x.copy(), gamma, beta,
                                   bn_param_for(kind), tracer if trace_forward else None)
        split = len(tracer.snapshots)
        raw = call_backward(backward, name, dout, cache, tracer)
    except Exception:  # noqa: BLE001 - judged already; the trace only adds a line
        return None
    return _TracedRun(spec, x, gamma, beta, dout, tracer, out, split, raw)


def grad_line(backward: Callable, forward: Callable, name: str, kind: str, seed: int,
               grads: list[str], result: dict[str, Any]) -> str:
    """For gradients with the right values in another shape: the lines that make them."""
    run = _traced_run(backward, forward, name, kind, seed, trace_forward=False)
    if run is None:
        return ""
    tracer, raw = run.tracer, run.raw
    texts = []
    for grad, value in zip(GRAD_NAMES, raw):
        if grad not in grads:
            continue
        index = _returned_index(tracer, backward, np.asarray(value, np.float64), grad)
        if index is None:
            continue
        snapshot = tracer.snapshots[index]
        if result.get("line") is None:
            result.update(line=snapshot.line, variable=snapshot.variable,
                          function=snapshot.function)
        texts.append(f"line {snapshot.line} makes {grad} (`{snapshot.variable}`)")
    return ". " + "; ".join(texts).capitalize()[0] + "; ".join(texts)[1:] if texts else ""


def assigned_text(function: Callable, places: list[int], result: dict[str, Any]) -> str:
    """For returned values that are no arrays of the right size (`dx = 0` left from the
    template): the line that last assigns each, read from the function's source."""
    import ast
    import inspect
    import textwrap
    try:
        recorded = getattr(function, "recorded_source", None)  # a stand-in for the box's
        if recorded is not None:
            lines, first = recorded.splitlines(keepends=True), function.first_line
        else:
            lines, first = inspect.getsourcelines(function)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return ""
    body = tree.body[0] if tree.body else None
    returns = [n for n in ast.walk(body) if isinstance(n, ast.Return) and isinstance(
        n.value, (ast.Tuple, ast.List))] if body is not None else []
    if not returns:
        return ""
    last = max(returns, key=lambda n: n.lineno)
    texts = []
    for place in places:
        if place >= len(last.value.elts) or not isinstance(last.value.elts[place], ast.Name):
            continue
        name = last.value.elts[place].id
        assigned = [n for n in ast.walk(body) if isinstance(n, (ast.Assign, ast.AugAssign,
                                                                ast.AnnAssign))
                    and n.lineno < last.lineno and any(
                        isinstance(t, ast.Name) and t.id == name for target in (
                            n.targets if isinstance(n, ast.Assign) else [n.target])
                        for t in ast.walk(target))]
        if not assigned:
            continue
        line = max(a.lineno for a in assigned) + first - 1
        if result.get("line") is None:
            result.update(line=line, variable=name, function=function.__name__)
        texts.append(f"line {line} last assigns {GRAD_NAMES[place]} (`{name}`), the value "
                     f"returned")
    return (". " + "; ".join(texts)[0].upper() + "; ".join(texts)[1:]) if texts else ""


def test_mode_departure(forward: Callable, name: str, kind: str, spec: NormSpec, x: np.ndarray,
                gamma: np.ndarray, beta: np.ndarray, start: dict,
                layout: tuple[int, ...] | None, result: dict[str, Any]) -> str:
    """Test mode again under the tracer; fill result's line fields; the sentence."""
    filename = student_file(forward)
    if filename is None:
        return ""
    tracer = LineTracer(filename)
    try:
        out, _ = call_forward(forward, name, kind, x, gamma, beta,
                               seeded_bn_param(kind, start, layout, "test"), tracer)
    except Exception:  # noqa: BLE001 - judged already; the trace only adds a line
        return ""
    catalogue = build_test_catalogue(x, gamma, beta, start["running_mean"],
                                     start["running_var"], spec)
    index = _returned_index(tracer, forward, np.asarray(out, np.float64), "out")
    if index is None:
        return ""
    departure, matches = locate_departure(tracer.snapshots, {"out": index}, ["out"], catalogue)
    if departure is None:
        return ""
    result.update(line=departure.line, variable=departure.variable, function=departure.function,
                  variant=departure.variant, stage=departure.stage, slip=departure.slip)
    return f". In test mode, {departure.sentence}"


def forward_departure(forward: Callable, name: str, kind: str, seed: int, result: dict[str, Any],
                   output: str, layout: tuple[int, ...] | None = None,
                   seeded: bool = True) -> str:
    """Run the forward again under the tracer; fill result's line fields; the sentence."""
    filename = student_file(forward)
    if filename is None:
        return ""
    spec, x, gamma, beta, dout = case_inputs(kind, seed)
    start = running_start(kind, spec, seed) if seeded else {}
    tracer = LineTracer(filename)
    param = seeded_bn_param(kind, start, layout)
    try:
        out, _ = call_forward(forward, name, kind, x, gamma, beta, param, tracer)
    except Exception:  # noqa: BLE001 - judged already; the trace only adds a line
        return ""
    catalogue = build_catalogue(x, gamma, beta, dout, spec, MOMENTUM if start else None, start)
    snapshots = tracer.snapshots
    outputs = {}
    if output == "out":
        index = _returned_index(tracer, forward, np.asarray(out, np.float64), "out")
        if index is not None:
            outputs["out"] = index
    else:
        stale = _stale_running_write(filename, snapshots, param, start, output)
        if stale is not None:
            result["case"] = saved_case(kind, spec, x, gamma, beta, dout, catalogue, {
                "out": out, **{k: param[k] for k in ("running_mean", "running_var")
                               if k in param}})
            result.update(line=stale[0], variable=stale[1], function=stale[2],
                          variant=stale[3], stage=output, slip="running-stats-overwritten")
            return f". {stale[4]}"
        index = next((s.index for s in reversed(snapshots) if output in s.variable), None)
        if index is not None:
            outputs[output] = index
    made = [i for i in tracer.returned.get(forward.__name__, []) if not snapshots[i].parameter]
    if not outputs and output == "out" and made:
        # out computed on the return line itself: what that line read leads to it
        outputs["returned"] = max(made)
    departure, matches = locate_departure(snapshots, outputs, list(outputs), catalogue)
    result["stages"] = stage_records(snapshots, matches, catalogue, departure)
    running = {key: param[key] for key in ("running_mean", "running_var") if key in param}
    result["case"] = saved_case(kind, spec, x, gamma, beta, dout, catalogue,
                                {"out": out, **running})
    if departure is None:
        return ""
    result.update(line=departure.line, variable=departure.variable, function=departure.function,
                  variant=departure.variant, stage=departure.stage, slip=departure.slip)
    return f". {departure.sentence[0].upper()}{departure.sentence[1:]}"


def _stale_running_write(filename: str, snapshots: list, param: dict, start: dict, key: str
                         ) -> tuple[int, str, str, str, str] | None:
    """When bn_param[key] still holds its value from before the step although a line of the
    forward computed the update: the last line writing a plain local into bn_param[key]
    (the stale one), as (line, variable, function, reason, sentence); else None."""
    import ast
    got, before = param.get(key), start.get(key)
    if before is None or not isinstance(got, np.ndarray) or got.size != before.size or \
            not np.array_equal(got.reshape(-1), before.reshape(-1)):
        return None
    try:
        with open(filename, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        return None
    ran = {s.function for s in snapshots}
    writes: list[tuple[str, int, ast.expr]] = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef) or function.name not in ran:
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                    and t.slice.value == key for t in node.targets):
                writes.append((function.name, node.lineno, node.value))
    stale = [w for w in writes if isinstance(w[2], ast.Name)]
    if not stale:
        return None
    blocks = {}  # each statement's block: a stale write after the update in the same block wins
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            for statement in getattr(node, name, []) or []:
                if isinstance(statement, ast.stmt):
                    blocks[statement.lineno] = (id(node), name)
    updates_at = [w for w in writes if not isinstance(w[2], ast.Name)]
    after_update = [w for w in stale if any(u[0] == w[0] and u[1] < w[1] and blocks.get(u[1])
                                            == blocks.get(w[1]) for u in updates_at)]
    function, line, value = max(after_update or stale, key=lambda w: w[1])
    variable = value.id  # type: ignore[attr-defined]
    updates = [w[1] for w in writes if w[0] == function and w[1] < line and w is not None
               and not isinstance(w[2], ast.Name)]
    read = next((s.line for s in snapshots if s.function == function and s.variable == variable
                 and not s.parameter), None)
    reason = (f"{key} is written back stale: the value from before the step overwrites the "
              f"update")
    sentence = (f"Line {line} writes `{variable}` into bn_param[{key!r}]; {variable} still "
                f"holds the value bn_param had before the step"
                + (f" (read at line {read})" if read is not None else "")
                + (f", so it overwrites the update of line {updates[-1]}" if updates else
                   ": the update is never stored"))
    return line, variable, function, reason, sentence


def _returned_index(tracer: LineTracer, function: Callable, value: np.ndarray,
                    name: str | None = None) -> int | None:
    """The snapshot holding what `function` returned (the last one equal to it)."""
    own = getattr(function, "__name__", "")
    candidates = [tracer.snapshots[i] for i in sorted(tracer.returned.get(own, []))] or \
        [s for s in tracer.snapshots if s.function == own]
    if name is not None:  # the variable named like the output last, so it is tried first
        candidates.sort(key=lambda s: s.variable == name)
    for layouts in (False, True):
        for snapshot in reversed(candidates):
            if snapshot.value.shape == value.shape and np.array_equal(snapshot.value, value):
                return snapshot.index
            if layouts and snapshot.value.size == value.size and np.array_equal(
                    np.sort(snapshot.value.ravel()), np.sort(value.ravel())):
                return snapshot.index
    return None


def trace_student_backward(backward: Callable, forward: Callable, name: str, kind: str,
                           seed: int, wrong: list[str], result: dict[str, Any]) -> str:
    """Forward and backward again under the tracer; fill result's line fields; the sentence."""
    run = _traced_run(backward, forward, name, kind, seed, trace_forward=True)
    if run is None:
        return ""
    spec, x, gamma, beta, dout = run.spec, run.x, run.gamma, run.beta, run.dout
    tracer, out, split, raw = run.tracer, run.out, run.split, run.raw
    catalogue = build_catalogue(x, gamma, beta, dout, spec)
    forward_snapshots, backward_snapshots = tracer.snapshots[:split], tracer.snapshots[split:]
    origin_out = None  # the forward's output, when it is wrong: a departure to inherit
    try:
        out = np.asarray(out, np.float64)
        if out.shape == x.shape and not scaled_error(out, staged_out(spec, x, gamma, beta)) \
                <= TOLERANCE:
            origin_out = _returned_index(tracer, forward, out, "out")
            origin_out = origin_out if origin_out is not None and origin_out < split else None
    except (TypeError, ValueError):
        pass
    outputs = {}
    for grad, value in zip(GRAD_NAMES, raw):
        index = _returned_index(tracer, backward, np.asarray(value, np.float64), grad)
        if index is not None and index >= split:
            outputs[grad] = index
    departure, matches = locate_departure(backward_snapshots, outputs, wrong, catalogue,
                                          origin=forward_snapshots, origin_out=origin_out)
    result["stages"] = stage_records(backward_snapshots, matches, catalogue, departure)
    result["case"] = saved_case(kind, spec, x, gamma, beta, dout, catalogue,
                           dict(zip(GRAD_NAMES, raw)))
    if departure is None:
        return ""
    if departure.count is not None:
        counted = _count_line(filename_of(backward), departure, tracer)
        if counted is not None:
            line, variable, text = counted
            departure.sentence = (f"line {line}, `{variable}` = {text} = {departure.count}, and "
                                  f"line {departure.line} divides by it: `{departure.variable}` "
                                  f"matches {departure.variant}")
            departure.line, departure.variable = line, variable
    if departure.variant is None:
        departure.sentence += _reduction_hint(filename_of(backward), departure.line)
    result.update(line=departure.line, variable=departure.variable, function=departure.function,
                  variant=departure.variant, stage=departure.stage, slip=departure.slip)
    return ". " + departure.sentence[0].upper() + departure.sentence[1:]


def _reduction_hint(filename: str, line: int) -> str:
    """For a departure no known slip explains: a sum or mean on its line without an axis
    (one number where one per statistic belongs), said as what it looks like."""
    import ast
    try:
        with open(filename, encoding="utf-8") as handle:
            source = handle.read()
        tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError):
        return ""
    statement = next((n for n in ast.walk(tree) if isinstance(n, ast.stmt)
                      and not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                             ast.For, ast.While, ast.If, ast.With, ast.Try))
                      and n.lineno <= line <= (n.end_lineno or n.lineno)), None)
    if statement is None:
        return ""
    for node in ast.walk(statement):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute) or \
                node.func.attr not in ("sum", "mean"):
            continue
        module_call = isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy")
        positional = len(node.args) > (1 if module_call else 0)
        if positional or any(k.arg in ("axis", "dim") for k in node.keywords):
            continue
        text = ast.get_source_segment(source, node) or node.func.attr
        return (f"; looks like `{text}` on this line has no axis: it adds every entry into one "
                f"number, where one per statistic belongs")
    return ""


def filename_of(function: Callable) -> str:
    return student_file(function) or ""


def _count_line(filename: str, departure: Any, tracer: LineTracer) -> tuple[int, str, str] | None:
    """The line assigning the count a departure's line divides by (`D = dout.shape[0]`),
    found by reading the function: (line, variable, the expression) when a name the line
    reads was last assigned, before it, a size equal to the wrong count."""
    import ast
    try:
        with open(filename, encoding="utf-8") as handle:
            source = handle.read()
        tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError):
        return None
    function = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                     and n.name == departure.function), None)
    if function is None:
        return None
    shapes = {}
    for snapshot in tracer.snapshots:
        if snapshot.function == departure.function and snapshot.line <= departure.line:
            shapes[snapshot.variable] = snapshot.value.shape
    reads = tracer.reads(departure.line)
    last: dict[str, tuple[int, int | None, str]] = {}
    known: dict[str, int] = {}
    for node in sorted((n for n in ast.walk(function) if isinstance(n, ast.Assign)),
                       key=lambda n: n.lineno):
        if node.lineno >= departure.line:
            continue
        for target in node.targets:
            names = [target] if isinstance(target, ast.Name) else list(
                target.elts) if isinstance(target, (ast.Tuple, ast.List)) else []
            for position, name in enumerate(names):
                if not isinstance(name, ast.Name):
                    continue
                value = _static_size(node.value, position if len(names) > 1 else None, shapes)
                if value is None and isinstance(node.value, ast.Name) and len(names) == 1:
                    value = known.get(node.value.id)  # `count = N`
                if value is not None:
                    known[name.id] = value
                last[name.id] = (node.lineno, value, ast.get_source_segment(source, node.value)
                                 or "")
    hits = [(line, name, text) for name, (line, value, text) in last.items()
            if value == departure.count and name in reads]
    return max(hits) if len(hits) == 1 else None


def _static_size(node: Any, position: int | None, shapes: dict[str, tuple[int, ...]]
                 ) -> int | None:
    """The integer an expression gives, when it is a size read off a known array's shape
    (`dout.shape[0]`, `x.shape` unpacked, `len(x)`) or a constant."""
    import ast
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and position is None:
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len" \
            and len(node.args) == 1 and isinstance(node.args[0], ast.Name) and position is None:
        shape = shapes.get(node.args[0].id)
        return shape[0] if shape else None
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and \
            node.value.attr == "shape" and isinstance(node.value.value, ast.Name) and \
            isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int) and \
            position is None:
        shape = shapes.get(node.value.value.id)
        try:
            return None if shape is None else shape[node.slice.value]
        except IndexError:
            return None
    if isinstance(node, ast.Attribute) and node.attr == "shape" and \
            isinstance(node.value, ast.Name) and position is not None:
        shape = shapes.get(node.value.id)
        return None if shape is None or position >= len(shape) else shape[position]
    return None


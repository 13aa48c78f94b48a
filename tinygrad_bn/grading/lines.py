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
                  variant=departure.variant, stage=departure.stage)
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
        index = next((s.index for s in reversed(snapshots) if output in s.variable), None)
        if index is not None:
            outputs[output] = index
    departure, matches = locate_departure(snapshots, outputs, list(outputs), catalogue)
    result["stages"] = stage_records(snapshots, matches, catalogue, departure)
    result["case"] = saved_case(kind, spec, x, gamma, beta, dout, catalogue, {"out": out})
    if departure is None:
        return ""
    result.update(line=departure.line, variable=departure.variable, function=departure.function,
                  variant=departure.variant, stage=departure.stage)
    return f". {departure.sentence[0].upper()}{departure.sentence[1:]}"


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
    result.update(line=departure.line, variable=departure.variable, function=departure.function,
                  variant=departure.variant, stage=departure.stage)
    return ". " + departure.sentence[0].upper() + departure.sentence[1:]


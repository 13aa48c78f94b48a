"""One table entry judged (`table.py`): the student's function called on the entry's cases
(through `assignment._call`, so that in the box the calls are recorded and in the checker
they are served back), each case judged against the staged reference or the entry's own
`judge_case`, a failure matched against the entry's known slips and located by its rule
(`where.py`). A backward is fed its own forward's cache; a slip of the forward's that reaches
it is named `from-the-forward`, with the forward's line. Inputs are handed over as copies:
a function writing into dout or x changes nothing the checker reads (it is noted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .assignment import StubError, StudentExitError, _call, exception_text, student_file, student_frame
from .casefile import case_arrays
from .functions.common import agrees
from .replay import ReplayError
from .table import ENVIRONMENT_SLIPS, AssignmentFunction, Case, Seen, Slip, entry
from .trace import LineTracer
from .where import locate, raised_line, source_of

__all__ = ["judge_entry", "FROM_THE_FORWARD"]

FROM_THE_FORWARD = ("Its result is wrong because the forward's slip flows into it (through the "
                    "cache or a call): fix the forward first.")


def _copy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    return value


def _arrays(result: Any, count: int, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    values = (result,) if count == 1 else tuple(result)
    arrays = []
    for value, name in zip(values, names):
        if value is None:
            raise StubError(f"returns no {name} yet (the assignment's stub)")
        try:
            arrays.append(np.asarray(value) if np.asarray(value).dtype.kind in "fiub"
                          else np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError):
            raise _NotAnArrayError(f"{name} is not an array of numbers") from None
    return tuple(arrays)


class _NotAnArrayError(Exception):
    pass


def _facts(e: AssignmentFunction, functions: dict[str, Callable]) -> dict[str, Any]:
    if e.reads is None:
        return {}
    holder = functions.get(e.forward) if e.forward else functions.get(e.name)
    source, _ = source_of(holder) if holder is not None else (None, 0)
    return e.reads(source or "")


def _tracer(function: Callable) -> LineTracer | None:
    filename = student_file(function)
    if filename is None:
        return None
    try:
        return LineTracer(filename)
    except (OSError, SyntaxError, ValueError):
        return None


def _run(e: AssignmentFunction, functions: dict[str, Callable], case: Case,
         traced: bool = False) -> Seen:
    """One case: the student's outputs (or error), the reference, the forward's output."""
    expected = e.reference(case)
    seen = Seen(case, None, expected)
    student = functions[e.name]
    tracer = _tracer(student) if traced else None
    if e.direction == "backward":
        forward = functions[e.forward]
        try:
            result = _call(forward, e.forward, *_copy(case.args))
        except (StubError, StudentExitError, ReplayError, NotImplementedError):
            raise
        except Exception as error:  # noqa: BLE001 - the forward raised: judged as the forward's
            seen.error = f"{e.forward}, whose cache it takes, {exception_text(error)}"
            seen.extra["forward_raised"] = True
            return seen
        if result is None or not isinstance(result, (tuple, list)) or len(result) != 2:
            raise StubError(f"not implemented: {e.forward}, whose cache it takes, returns no "
                            f"output yet")
        seen.extra["forward_out"] = np.asarray(result[0]) if result[0] is not None else None
        args: tuple[Any, ...] = (case.dout.copy(), result[1])
        originals: tuple[Any, ...] = (case.dout,)
    else:
        args = _copy(case.args)
        originals = case.args
    try:
        value = _call(student, e.name, *args, tracer=tracer)
    except (StubError, StudentExitError, ReplayError, NotImplementedError):
        raise
    except Exception as error:  # noqa: BLE001 - the student's code raised
        seen.error = exception_text(error)
        seen.error_line = raised_line(student_frame(error))
    else:
        count = len(e.returns) if e.direction == "backward" else len(e.returns) - (
            1 if e.direction == "forward" else 0)
        if value is None:
            raise StubError("returns no output yet (the assignment's stub)")
        if e.direction == "forward":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise StubError("returns no (out, cache) pair yet (the assignment's stub)")
            value = value[0]
        elif count > 1 and (not isinstance(value, (tuple, list)) or len(value) != count):
            got = len(value) if isinstance(value, (tuple, list)) else 1
            seen.error = f"returns {got} values; the assignment's signature returns {count}"
            return seen
        try:
            seen.outputs = _arrays(value, count, e.returns[:1] if e.direction == "forward"
                                   else e.returns)
        except _NotAnArrayError as error:
            seen.error = str(error)
    finally:
        names = e.signature
        seen.extra["wrote"] = [n for n, given, kept in zip(names, args, originals)
                               if isinstance(kept, np.ndarray) and isinstance(given, np.ndarray)
                               and not np.array_equal(given, kept, equal_nan=True)]
    if tracer is not None:
        seen.snapshots = list(tracer.snapshots)
    return seen


def _problem(e: AssignmentFunction, seen: Seen) -> str | None:
    if seen.error is not None:
        return seen.error
    if e.judge_case is not None:
        return e.judge_case(seen)
    names = e.returns[:1] if e.direction == "forward" else e.returns
    for name, got, right in zip(names, seen.outputs, seen.expected):
        if got.shape != right.shape:
            return f"{name} has shape {got.shape}, expected {right.shape}"
        if not agrees(got, right, e.tolerance):
            from ..check.gradcheck import scaled_error
            with np.errstate(all="ignore"):
                error = scaled_error(np.asarray(got, dtype=np.float64), right)
            return f"{name} differs from the staged graph's (normwise error {error:.2g})"
    return None


def _matching(slips: tuple[Slip, ...], seen: Seen) -> Slip | None:
    for slip in slips:
        try:
            with np.errstate(all="ignore"):
                if slip.matches(seen):
                    return slip
        except Exception:  # noqa: BLE001, S112 - a predicate that cannot read these values
            continue
    return None


def judge_entry(functions: dict[str, Callable], name: str, seed: int = 0) -> dict[str, Any]:
    """The verdict on `functions[name]` as data (the schema of `FunctionResult`). The table's
    cases are fixed (`seed` varies only the normalizations' inputs)."""
    e = entry(name)
    result: dict[str, Any] = {"name": name, "status": "pass", "diagnosis": ""}
    try:
        _judge(e, functions, result)
    except StubError as stub:
        result.update(status="not implemented", diagnosis=str(stub))
    except StudentExitError as error:
        result.update(status="error", diagnosis=str(error))
    except ReplayError as error:
        result.update(status="error", diagnosis=f"cannot be judged: {error}")
    except NotImplementedError as stub:
        result.update(status="not implemented",
                      diagnosis=f"raises NotImplementedError{student_frame(stub)}")
    except Exception as error:  # noqa: BLE001 - values no entry foresaw: this function's row
        result.update(status="error", diagnosis=f"cannot be judged: the check failed on its "
                                                f"values ({type(error).__name__}: {error})")
    return result


def _judge(e: AssignmentFunction, functions: dict[str, Callable], result: dict[str, Any]) -> None:
    if e.forward is not None and e.forward not in functions:
        result.update(status="error", diagnosis=f"cannot be checked: needs {e.forward} (its "
                                                f"cache) to be defined")
        return
    facts = _facts(e, functions)
    cases = e.cases(facts)
    read = f" (p read as the {facts['p_means']} probability: {facts['p_read']})" \
        if "p_means" in facts else ""
    parts: dict[str, str] = {}
    result["parts"] = parts
    for case in cases:
        seen = _run(e, functions, case)
        for name in seen.extra.get("wrote", []):
            note = f"writes into {name} in place (harmless here: the checker hands over copies)"
            if note not in result.setdefault("warnings", []):
                result["warnings"].append(note)
        problem = _problem(e, seen)
        if problem is None:
            parts[case.label] = "right"
            continue
        parts[case.label] = "wrong"
        _fail(e, functions, case, problem, result, facts)
        result["diagnosis"] += read
        return
    result["diagnosis"] = f"right on all {len(cases)} cases: {e.about}{read}"


def _fail(e: AssignmentFunction, functions: dict[str, Callable], case: Case, problem: str,
          result: dict[str, Any], facts: dict[str, Any]) -> None:
    seen = _run(e, functions, case, traced=True)
    result["case"] = case_arrays(e.name, case, seen.outputs, seen.expected)
    status = "error" if seen.error is not None else "fail"
    slip = None if seen.extra.get("forward_raised") else _matching(e.slips + ENVIRONMENT_SLIPS, seen)
    where = f" on {case.label}"
    if slip is None and e.direction == "backward":
        forward = _forward_slip(e, functions, case)
        if forward is not None:
            result.update(status=status, variant="from-the-forward", slip="from-the-forward",
                          diagnosis=f"{problem}{where}. {FROM_THE_FORWARD} "
                                    f"(Line {forward['line']} of {e.forward}: {forward['reason']})"
                          if forward["line"] else f"{problem}{where}. {FROM_THE_FORWARD} "
                                                  f"({forward['reason']})",
                          line=forward["line"], variable=forward["variable"],
                          function=e.forward)
            return
    student = functions[e.name]
    if slip is not None:
        line, variable = locate(slip.locate, seen, student, e.name, slip.output, e.part)
        at = f"Line {line}" + (f", `{variable}`" if variable else "") + ": " if line else ""
        result.update(status=status, variant=slip.name, slip=slip.name, line=line,
                      variable=variable,
                      function=e.name,
                      diagnosis=f"{problem}{where}. {at}{slip.reason} [{slip.name}]")
        return
    if seen.error is not None:
        line, variable = raised_line(seen.error), None
    else:
        index = _first_wrong(e, seen)
        line, variable = locate("returns", seen, student, e.name, index, e.part)
    result.update(status=status, line=line, variable=variable, function=e.name,
                  diagnosis=f"{problem}{where}. No known slip matches" +
                  (f"; the wrong value is written on line {line}" if line else ""))


def _first_wrong(e: AssignmentFunction, seen: Seen) -> int:
    if seen.outputs is None:
        return 0
    for index, (got, right) in enumerate(zip(seen.outputs, seen.expected)):
        if not agrees(got, right, e.tolerance):
            return index
    return 0


def _forward_slip(e: AssignmentFunction, functions: dict[str, Callable],
                  case: Case) -> dict[str, Any] | None:
    """The forward's own slip on `case`, when the forward is wrong or raises there."""
    forward = entry(e.forward)
    seen = _run(forward, functions, case)
    if _problem(forward, seen) is None:
        return None
    seen = _run(forward, functions, case, traced=True)
    slip = _matching(forward.slips + ENVIRONMENT_SLIPS, seen)
    if slip is None:
        return {"reason": "the forward departs from the staged graph", "line": raised_line(
            seen.error), "variable": None, "variant": None}
    line, variable = locate(slip.locate, seen, functions[e.forward], e.forward, slip.output,
                            forward.part)
    return {"reason": slip.reason, "line": line, "variable": variable, "variant": slip.name}

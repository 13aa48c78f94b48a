"""Judging one function, in the child process: a forward in parts (train-mode output, running
statistics, test-mode output), a backward's dx, dgamma and dbeta from the cache of the student's
own forward (each judged on its own); inputs are handed over as copies, a write into them
noted. A wrong value is then traced to its line (`lines.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..check.diagnose import describe_departure, find_departure, staged_gradients
from ..check.gradcheck import scaled_error
from ..core.node import Node
from ..norm import NormSpec, staged_nodes
from .assignment import (
    EPS,
    FORWARD_OF,
    FUNCTIONS,
    GRAD_NAMES,
    MOMENTUM,
    TOLERANCE,
    CheckFailedError,
    StubError,
    StudentExitError,
    arrays_in,
    bn_param_for,
    call_backward,
    call_forward,
    case_inputs,
    exception_text,
    float_array,
    running_layout,
    running_start,
    seeded_bn_param,
    staged_out,
    student_file,
    student_frame,
)
from .lines import (
    assigned_text,
    forward_departure,
    grad_line,
    shape_line,
    test_mode_departure,
    trace_student_backward,
)
from .replay import ReplayError

__all__ = ["judge_function"]


def judge_function(loader: Callable, name: str, seed: int) -> dict[str, Any]:
    functions = loader()[0]
    kind, direction = FUNCTIONS[name]
    result: dict[str, Any] = {"name": name, "status": "pass", "diagnosis": "",
                              "file": student_file(functions[name]) or ""}
    try:
        if direction == "forward":
            _judge_forward(functions[name], name, kind, seed, result)
        else:
            forward = functions.get(FORWARD_OF[kind])
            if forward is None:
                result.update(status="error", diagnosis=f"cannot be checked: needs "
                              f"{FORWARD_OF[kind]} (its cache) to be defined")
            else:
                _judge_backward(functions[name], forward, name, kind, seed, result)
    except StubError as stub:
        result.update(status="not implemented", diagnosis=str(stub))
    except CheckFailedError as failure:
        result.update(status="fail", diagnosis=str(failure), stage=failure.stage)
    except StudentExitError as error:
        result.update(status="error", diagnosis=str(error))
    except ReplayError as error:
        result.update(status="error", diagnosis=f"cannot be judged: {error}")
    except NotImplementedError as stub:
        result.update(status="not implemented", diagnosis=f"raises NotImplementedError{student_frame(stub)}")
    except ForwardError as error:
        result.update(status="error", diagnosis=str(error), **_crash_place(str(error)))
    except Exception as error:  # noqa: BLE001 - the student's code raised
        text = exception_text(error)
        if _assert_false_stub(text):
            result.update(status="not implemented",
                          diagnosis=f"not implemented yet: it stops at `assert False`"
                                    f"{student_frame(error)}", **_crash_place(text))
        else:
            result.update(status="error", diagnosis=text, **_crash_place(text))
            _environment(functions.get(name), name, result)
    if "stages" in result:
        result["stages"] = [s.__dict__ for s in result["stages"]]
    return result


class ForwardError(Exception):
    """A backward's forward raised on valid inputs: the backward cannot be run."""


_FRAME = re.compile(r"\(line (\d+)(?: of [^ ]+)? in ([A-Za-z_][A-Za-z0-9_]*): ")


def _crash_place(text: str) -> dict[str, Any]:
    """line and function of the student's innermost frame named in an error's text."""
    found = _FRAME.findall(text)
    if not found:
        return {}
    line, function = found[-1]
    return {"line": int(line), "function": function}


def _assert_false_stub(text: str) -> bool:
    """An `assert False` (with or without a message) is a stub, not a crash."""
    return text.startswith("raised AssertionError") and re.search(
        r": assert\s*\(?\s*False\b", text) is not None


def is_template_stub(function: Callable) -> bool:
    """Whether a function's body does nothing: a docstring, `pass`, names set to None or
    zeros-free constants, a `raise NotImplementedError` or `assert False`, and a return."""
    import ast
    import inspect
    import textwrap
    source = getattr(function, "recorded_source", None)
    try:
        source = source if source is not None else inspect.getsource(function)
        tree = ast.parse(textwrap.dedent(source))
    except (OSError, TypeError, SyntaxError):
        return False
    body = tree.body[0].body if tree.body and isinstance(
        tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if not body:
        return False
    for node in body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, (ast.Pass, ast.Return, ast.Raise)):
            continue
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant) and \
                not node.test.value:
            continue
        if isinstance(node, ast.Assign) and all(
                isinstance(v, ast.Constant) and v.value is None for v in ast.walk(node.value)
                if not isinstance(v, (ast.Tuple, ast.List, ast.Load))):
            continue
        return False
    return True


def _environment(function: Callable | None, name: str, result: dict[str, Any]) -> None:
    """An error that is not the math (code for Python 2 or an older numpy) named so, at the
    student's line, as for every other function of the assignment."""
    from .table import ENVIRONMENT_SLIPS, Seen
    from .where import locate
    seen = Seen(None, None, (), error=result["diagnosis"])  # type: ignore[arg-type]
    slip = next((s for s in ENVIRONMENT_SLIPS if s.matches(seen)), None)
    if slip is None or function is None:
        return
    line, variable = locate(slip.locate, seen, function, name, 0)
    result.update(variant=slip.name, slip=slip.name, line=line or result.get("line"),
                  variable=variable, function=name,
                  diagnosis=f"{result['diagnosis']}. {slip.reason} [{slip.name}]")


def _judge_forward(forward: Callable, name: str, kind: str, seed: int,
                   result: dict[str, Any]) -> None:
    parts: dict[str, str] = {}
    problems: list[tuple[str, str | None]] = []
    train_wrong = False
    layout, held = running_layout(forward, name, kind, case_inputs(kind, seed)[0], seed)
    features = case_inputs(kind, seed)[0].param_shape[0]
    for round_ in range(3):
        spec, x, gamma, beta, _ = case_inputs(kind, seed + round_)
        originals = [a.copy() for a in (x, gamma, beta)]
        start = running_start(kind, spec, seed + round_)
        if held is not None and held != features:
            # its running statistics hold another number of values than one per feature:
            # the train output is judged as the assignment's first call gets it
            start = {}
        param = seeded_bn_param(kind, start, layout)
        given = [a.copy() for a in (x, gamma, beta)]
        out, _ = call_forward(forward, name, kind, *given, param)
        _note_writes(given, originals, ("x", "gamma", "beta"), result)
        out = float_array(out, "out")
        if out.shape != x.shape:
            raise CheckFailedError(f"out has shape {out.shape}, expected x's shape {x.shape}"
                                    + shape_line(forward, name, kind, seed + round_, result),
                                    "out")
        error = scaled_error(out, staged_out(spec, x, gamma, beta))
        if not error <= TOLERANCE:
            parts["train"] = "wrong"
            train_wrong = True
            message = forward_departure(forward, name, kind, seed + round_, result, "out", layout,
                                     seeded=bool(start))
            problems.append((f"train-mode out differs from the staged graph's (normwise error "
                             f"{error:.2g}){message}", result.get("stage")))
            break
        parts["train"] = "right"
        if kind in ("batch", "spatial") and not start:
            parts["running statistics"] = "wrong"
            problems.append((f"running_mean holds {held} values after a train step; expected "
                             f"{features}, one per feature", "out"))
            break
        if kind in ("batch", "spatial"):
            text = _running_statistics(param, start, spec, x)
            if text is not None:
                parts["running statistics"] = "wrong"
                where = forward_departure(forward, name, kind, seed + round_, result,
                                       "running_mean" if "running_mean" in text.split(" ")[0]
                                       else "running_var", layout)
                problems.append((text + where, "out"))
                break
            parts["running statistics"] = "right"
    foreign = held is not None and held != features  # running statistics in no known layout
    if kind in ("batch", "spatial") and not train_wrong and not foreign:
        spec, x, gamma, beta, _ = case_inputs(kind, seed)
        parts["test"], text = _test_mode(forward, name, kind, spec, x, gamma, beta,
                                         running_start(kind, spec, seed), layout, result)
        if text:
            problems.append((text, "out" if parts["test"] == "wrong" else None))
    if not train_wrong:
        spec, x, gamma, beta, _ = case_inputs(kind, seed, np.float32)
        held_start = {} if foreign else running_start(kind, spec, seed)
        out, _ = call_forward(forward, name, kind, x, gamma, beta,
                              seeded_bn_param(kind, held_start, layout))
        dtype = np.asarray(out).dtype
        parts["dtype"] = "kept" if dtype == np.float32 else str(dtype)
        if dtype != np.float32:
            result.setdefault("warnings", []).append(
                f"a float32 input gives {dtype} output (np.zeros(x.shape) makes float64?); "
                f"x.dtype keeps memory and speed as the caller chose")
    result["parts"] = parts
    if problems:
        done = [p for p, v in parts.items() if v == "right" and p != "dtype"]
        prefix = "; ".join(f"{p} right" for p in done)
        text = "; ".join(p for p, _ in problems)
        result.update(status="fail", diagnosis=(prefix + "; " if prefix else "") + text,
                      stage=problems[0][1] if result.get("stage") is None else result["stage"])
        return
    result["diagnosis"] = ("matches the staged graph (train and test mode, running statistics)"
                           if kind in ("batch", "spatial") else "matches the staged graph (output)")


def _note_writes(arrays: Iterable[np.ndarray], originals: Iterable[np.ndarray],
                 names: Iterable[str], result: dict[str, Any]) -> None:
    """One rule for every function: it is handed copies, so writing into its inputs changes
    nothing the checker reads; the write is noted, not failed."""
    for array, original, name in zip(arrays, originals, names):
        if not np.array_equal(array, original, equal_nan=True):
            note = f"writes into {name} in place (harmless here: the checker hands over copies)"
            if note not in result.setdefault("warnings", []):
                result["warnings"].append(note)


def _running_statistics(param: dict, start: dict, spec: NormSpec, x: np.ndarray) -> str | None:
    """None when the running statistics hold the right values (in any shape), else why not."""
    batch = {"running_mean": x.mean(axis=spec.reduce_axes),
             "running_var": x.var(axis=spec.reduce_axes)}
    for key, stat in batch.items():
        if key not in param:
            return f"{key} is not written back into bn_param"
        got = float_array(param[key], key)
        right = MOMENTUM * start[key] + (1 - MOMENTUM) * stat
        if got.size != right.size:
            return f"{key} has {got.size} values after a train step; expected {right.size}, one per feature"
        got = got.reshape(right.shape)
        if scaled_error(got, right) <= TOLERANCE:
            continue
        if scaled_error(got, (1 - MOMENTUM) * start[key] + MOMENTUM * stat) <= TOLERANCE:
            return (f"{key} = (1 - momentum) * {key} + momentum * batch: the momentum is used "
                    f"the wrong way round; the assignment's convention is {key} = momentum * "
                    f"{key} + (1 - momentum) * batch")
        n = spec.count
        if key == "running_var" and scaled_error(
                got, MOMENTUM * start[key] + (1 - MOMENTUM) * stat * n / (n - 1)) <= TOLERANCE:
            return ("running_var is updated with the unbiased variance (1/(N-1)); batch norm "
                    "keeps the biased one (1/N)")
        if key == "running_var" and scaled_error(
                got, MOMENTUM * start[key] + (1 - MOMENTUM) * (stat + EPS)) <= TOLERANCE:
            return "running_var is updated with var + eps; keep var itself"
        return (f"{key} after one train step holds {np.round(got.ravel()[:3], 5).tolist()}...; "
                f"momentum * {key} + (1 - momentum) * batch statistic (momentum {MOMENTUM}) "
                f"is {np.round(right.ravel()[:3], 5).tolist()}...")
    return None


def _test_mode(forward: Callable, name: str, kind: str, spec: NormSpec, x: np.ndarray,
               gamma: np.ndarray, beta: np.ndarray, start: dict,
               layout: tuple[int, ...] | None = None,
               result: dict[str, Any] | None = None) -> tuple[str, str]:
    """(verdict, sentence) for test mode: "right", "not implemented" or "wrong"."""
    param = seeded_bn_param(kind, start, layout, "test")
    try:
        out, _ = call_forward(forward, name, kind, x, gamma, beta, param)
    except (StubError, NotImplementedError):
        return "not implemented", "test mode not implemented yet (it returns no output)"
    except StudentExitError:
        raise
    except Exception as error:  # noqa: BLE001 - the student's test mode raised: a wrong part
        return "wrong", f"test mode {exception_text(error)}"
    shape = spec.param_bshape
    expected = gamma.reshape(shape) * (x - start["running_mean"].reshape(shape)) / np.sqrt(
        start["running_var"].reshape(shape) + EPS) + beta.reshape(shape)
    out = float_array(out, "test-mode out")
    if out.shape != expected.shape or not scaled_error(out, expected) <= TOLERANCE:
        where = "" if result is None else test_mode_departure(forward, name, kind, spec, x, gamma, beta,
                                                      start, layout, result)
        if out.shape == expected.shape and scaled_error(out, staged_out(spec, x, gamma, beta)) \
                <= TOLERANCE:
            return "wrong", ("test mode normalizes with the batch's own statistics; it should use "
                             "running_mean and running_var" + where)
        return "wrong", ("test-mode out is not gamma * (x - running_mean) / sqrt(running_var + "
                         "eps) + beta" + where)
    for key in ("running_mean", "running_var"):
        got = np.asarray(param.get(key), dtype=np.float64)
        if got.size != start[key].size or not np.array_equal(got.reshape(-1), start[key]):
            return "wrong", f"test mode changes {key}: only train mode updates it"
    return "right", ""


def _judge_backward(backward: Callable, forward: Callable, name: str, kind: str, seed: int,
                    result: dict[str, Any]) -> None:
    forward_name = FORWARD_OF[kind]
    for round_ in range(3):
        spec, x, gamma, beta, dout = case_inputs(kind, seed + round_)
        try:
            _, cache = call_forward(forward, forward_name, kind, x.copy(), gamma, beta,
                                     bn_param_for(kind))
        except (StubError, NotImplementedError):
            raise StubError(f"not implemented: {forward_name}, whose cache it takes, is not "
                             f"implemented yet") from None
        except (CheckFailedError, StudentExitError, ReplayError):
            raise
        except Exception as error:  # noqa: BLE001 - the forward raised: not the backward's
            if is_template_stub(backward):
                raise StubError("not implemented yet (the assignment's stub; its forward "
                                f"{forward_name} raises too)") from None
            text = exception_text(error)
            if _assert_false_stub(text):
                raise StubError(f"not implemented: {forward_name}, whose cache it takes, "
                                f"stops at `assert False`") from None
            raise ForwardError(f"cannot run: its forward {forward_name}, whose cache it takes, "
                               f"{text}; fix the forward first") from None
        held = [(place, array, array.copy()) for place, array in arrays_in(cache)]
        dout_given = dout.copy()
        raw = call_backward(backward, name, dout_given, cache)
        _note_writes([dout_given], [dout], ["dout"], result)
        for place, array, copy in held:
            if not np.array_equal(array, copy, equal_nan=True):
                raise CheckFailedError(f"modifies the cache's arrays in place ({place}): a "
                                        f"second backward with the same cache would be wrong")
        student = [float_array(r, n) for r, n in zip(raw, GRAD_NAMES)]
        correct = staged_gradients(x, gamma, beta, dout, spec)
        correct = (correct[0], correct[1].reshape(gamma.shape), correct[2].reshape(beta.shape))
        verdicts: dict[str, str] = {}
        texts: list[str] = []
        misshapen: list[str] = []  # another number of values than the gradient has
        for grad, s, c in zip(GRAD_NAMES, student, correct):
            if s.shape == c.shape:
                error = scaled_error(s, c)
                verdicts[grad] = "right" if error <= TOLERANCE else "wrong"
                if verdicts[grad] == "wrong":
                    texts.append(f"{grad} wrong (normwise error {error:.2g})")
                continue
            if s.size == c.size and scaled_error(s.reshape(c.shape), c) <= TOLERANCE:
                verdicts[grad] = "wrong shape"
                texts.append(f"{grad} has the right values in shape {s.shape}; expected "
                             f"{c.shape}, {grad[1:]}'s own shape" +
                             (" (keepdims=True?)" if s.ndim > c.ndim else ""))
                continue
            verdicts[grad] = "wrong"
            texts.append(_shape_text(grad, s, c, spec, x, gamma, beta, dout))
            misshapen.append(grad)
        result["parts"] = verdicts
        if all(v == "right" for v in verdicts.values()):
            continue
        stage = {"dx": "xmu", "dgamma": "gammax", "dbeta": "out"}[
            next(g for g, v in verdicts.items() if v != "right")]
        wrong_values = [g for g, v in verdicts.items() if v == "wrong"]
        sentence = ""
        shaped = [g for g, v in verdicts.items() if v == "wrong shape"]
        if shaped and not wrong_values:
            sentence = grad_line(backward, forward, name, kind, seed + round_, shaped, result)
        if wrong_values:
            sentence = trace_student_backward(backward, forward, name, kind, seed + round_, wrong_values,
                                       result)
            if not sentence and all(s.shape == c.shape for s, c in zip(student, correct)):
                flat = (student[0], student[1].reshape(-1), student[2].reshape(-1))
                departure = find_departure(flat, x, gamma.reshape(-1), beta.reshape(-1), dout, spec)
                if departure is not None and abs(departure.factor - 1) > 1e-3:
                    result["stage"] = departure.stage
                    sentence = " " + describe_departure(departure)
        right = [g for g, v in verdicts.items() if v == "right"]
        text = "; ".join(texts) + (f"; {' and '.join(right)} right" if right else "")
        if not sentence and misshapen:
            sentence = assigned_text(backward, [GRAD_NAMES.index(g) for g in misshapen], result)
        if not sentence and wrong_values:
            sentence = (". No line of yours matches a known slip: compare your intermediates "
                        "with `tinygrad-bn explain --values --load` on the saved case")
        result.setdefault("stage", stage)
        if result.get("stage") is None:
            result["stage"] = stage
        raise CheckFailedError(text + ("" if not sentence else
                                        (sentence if sentence.startswith((".", " ")) else ". " + sentence)),
                                result["stage"])
    result["diagnosis"] = "dx, dgamma, dbeta match the staged graph on 3 random inputs"


def _shape_text(grad: str, s: np.ndarray, c: np.ndarray, spec: NormSpec, x: np.ndarray,
                gamma: np.ndarray, beta: np.ndarray, dout: np.ndarray) -> str:
    if grad == "dx":
        return f"dx has shape {s.shape}, expected x's shape {c.shape}"
    nodes = staged_nodes(Node(x), Node(gamma), Node(beta), spec)
    xhat = nodes["xhat"].data.reshape(spec.x_shape)
    terms = dout * xhat if grad == "dgamma" else dout
    for axis in range(terms.ndim):
        total = terms.sum(axis=axis)
        if total.shape == s.shape and scaled_error(total, s) <= TOLERANCE:
            return (f"{grad} has shape {s.shape}, expected {c.shape}: it is the sum over axis "
                    f"{axis}; {grad} sums over the axes {spec.param_sum_axes} that {grad[1:]} "
                    f"does not have")
    return f"{grad} has shape {s.shape}, expected {c.shape} (a sum over the wrong axis?)"


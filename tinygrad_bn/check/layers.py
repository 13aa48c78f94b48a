"""Check a student's own CS231n `layers.py` against the staged graphs.

    report = check_layers("cs231n/layers.py")     # a path, an imported module, or a dict
    print(report); report.ok; report.results["batchnorm_backward"].diagnosis

Every function the source defines among FUNCTIONS is called with the assignment's
signature on several random inputs and judged against the staged graph of its
normalization: a forward's train and test outputs, running statistics and dtype, a
backward's dx, dgamma, dbeta (computed from the cache of the student's own forward), and
that no input is modified in place. A wrong backward is diagnosed from the graph (see
`diagnose.py`): the step of the backward pass it departs at, and how.

Each function runs in a forked child process with a time limit, so an endless loop is
reported as an error and never hangs the check; a file is also loaded in a child, so its
module-level code never runs in the caller's process.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import pathlib
import traceback
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.node import Node
from ..norm import NormSpec, norm_spec, staged_nodes
from .diagnose import describe_departure, find_departure, staged_gradients
from .gradcheck import scaled_error

__all__ = ["FUNCTIONS", "FunctionResult", "LayersReport", "check_layers"]

# function name -> (normalization kind, forward or backward)
FUNCTIONS = {
    "batchnorm_forward": ("batch", "forward"),
    "batchnorm_backward": ("batch", "backward"),
    "batchnorm_backward_alt": ("batch", "backward"),
    "layernorm_forward": ("layer", "forward"),
    "layernorm_backward": ("layer", "backward"),
    "spatial_batchnorm_forward": ("spatial", "forward"),
    "spatial_batchnorm_backward": ("spatial", "backward"),
    "spatial_groupnorm_forward": ("group", "forward"),
    "spatial_groupnorm_backward": ("group", "backward"),
}
FORWARD_OF = {"batch": "batchnorm_forward", "layer": "layernorm_forward",
              "spatial": "spatial_batchnorm_forward", "group": "spatial_groupnorm_forward"}
# Shapes with N != D (a sum over the wrong axis shows) and small enough to read.
SHAPES = {"batch": (4, 5), "layer": (4, 5), "spatial": (3, 2, 4, 5), "group": (2, 6, 3, 4)}
GROUPS = 3
EPS = 1e-5
MOMENTUM = 0.8  # not 0.5, so that a momentum used the wrong way round shows
TOLERANCE = 1e-8  # normwise; the inputs are well conditioned (N >= 4 values per statistic)


class _StubError(Exception):
    """The assignment's stub: it returns None or raises NotImplementedError."""


class _CannotCheckError(Exception):
    """The function cannot be judged (e.g. the forward whose cache it needs is a stub)."""


class _CheckFailedError(Exception):
    """A check failed; the message is the diagnosis (and `stage` the step, when known)."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class FunctionResult:
    """The verdict on one function: status, the sentence a student reads, and for a wrong
    backward the stage of the staged graph it departs at."""

    name: str
    status: str
    diagnosis: str
    stage: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "pass"


@dataclass
class LayersReport:
    """One FunctionResult per function the source defines; `error` when it cannot be loaded."""

    source: str
    results: dict[str, FunctionResult] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the source loads and every function it defines passes."""
        return self.error is None and bool(self.results) and all(
            r.ok for r in self.results.values())

    def _repr_markdown_(self) -> str:
        """The verdicts as a Markdown table (how Jupyter shows it)."""
        if self.error is not None:
            return f"**{self.source}** cannot be loaded: {self.error}"
        lines = [f"**{self.source}** against the staged graphs", "",
                 "| function | status | stage | diagnosis |", "|---|---|---|---|"]
        for name, result in self.results.items():
            diagnosis = result.diagnosis.replace("|", "\\|")
            lines.append(f"| {name} | {result.status} | {result.stage or ''} | {diagnosis} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [f"checking {self.source} against the staged graphs"]
        if self.error is not None:
            lines.append(f"cannot load it: {self.error}")
            return "\n".join(lines)
        if not self.results:
            lines.append("it defines none of: " + ", ".join(FUNCTIONS))
        width = max((len(name) for name in self.results), default=0)
        for name, result in self.results.items():
            stage = f" [stage {result.stage}]" if result.stage else ""
            lines.append(f"{name:<{width}}  {result.status.upper():<15}{stage} {result.diagnosis}")
        passed = sum(r.ok for r in self.results.values())
        lines.append(f"{passed} of {len(self.results)} functions pass"
                     + ("" if self.ok else "; `tinygrad-bn explain --values` shows every "
                        "stage's value and gradient for comparison with your own"))
        return "\n".join(lines)


def check_layers(source: Any, *, only: Iterable[str] | None = None, seed: int = 0,
                 timeout: float = 60.0) -> LayersReport:
    """Judge the normalization functions of `source` (a path to a .py file, a module, or a
    dict of functions) against the staged graphs. only: the names to check (default all
    that the source defines); timeout: seconds each function may take."""
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"source: no such file {str(path)!r}")
        label = str(path)
        loader = _load_path(path)
    elif isinstance(source, types.ModuleType):
        label = getattr(source, "__file__", None) or source.__name__
        loader = _from_namespace(vars(source))
    elif isinstance(source, dict):
        label = "the given functions"
        loader = _from_namespace(source)
    else:
        raise TypeError(f"source: expected a path, a module or a dict of functions, got "
                        f"{type(source).__name__}")
    report = LayersReport(source=label)
    wanted = list(FUNCTIONS) if only is None else list(only)
    for name in wanted:
        if name not in FUNCTIONS:
            raise ValueError(f"only: expected names among {', '.join(FUNCTIONS)}, got {name!r}")
    defined = _run_isolated(lambda: sorted(loader()), timeout)
    if isinstance(defined, BaseException) or isinstance(defined, _Timeout):
        report.error = _load_error_text(defined, label)
        return report
    for name in (n for n in FUNCTIONS if n in wanted and n in defined):
        outcome = _run_isolated(lambda name=name: _check_function(loader(), name, seed), timeout)
        if isinstance(outcome, _Timeout):
            report.results[name] = FunctionResult(
                name, "error", f"timed out after {timeout:g} s (an endless loop?)")
        elif isinstance(outcome, BaseException):
            report.results[name] = FunctionResult(name, "error", f"the check itself failed: {outcome}")
        else:
            report.results[name] = outcome
    return report


# --- loading and isolation -------------------------------------------------------------
def _load_path(path: pathlib.Path) -> Callable[[], dict[str, Callable]]:
    def load() -> dict[str, Callable]:
        spec = importlib.util.spec_from_file_location("student_layers", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return {name: fn for name, fn in vars(module).items() if name in FUNCTIONS and callable(fn)}
    return load


def _from_namespace(namespace: dict) -> Callable[[], dict[str, Callable]]:
    functions = {name: fn for name, fn in namespace.items() if name in FUNCTIONS and callable(fn)}
    return lambda: functions


class _Timeout:
    pass


def _run_isolated(work: Callable[[], Any], timeout: float) -> Any:
    """work() in a forked child: its result, the exception it raised, or a _Timeout."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child() -> None:
        try:
            result: Any = work()
        except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
            result = _picklable_error(error)
        try:
            sender.send(result)
        except Exception as error:  # noqa: BLE001
            sender.send(RuntimeError(f"could not send the result back: {error}"))

    process = context.Process(target=child, daemon=True)
    process.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            return receiver.recv()
        return _Timeout()
    except EOFError:
        return RuntimeError(f"the check's process ended (exit code {process.exitcode})")
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()


def _picklable_error(error: BaseException) -> BaseException:
    if isinstance(error, SyntaxError):
        return SyntaxError(error.msg, (error.filename, error.lineno, error.offset, error.text))
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return RuntimeError(text + _where(error))


def _where(error: BaseException) -> str:
    # The last line of the student's file in the traceback, if any.
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "tinygrad_bn" not in f.filename.replace("\\", "/").split("/")]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (line {frame.lineno}: {frame.line.strip() if frame.line else ''})"


def _load_error_text(error: Any, label: str) -> str:
    if isinstance(error, _Timeout):
        return "loading it timed out"
    if isinstance(error, SyntaxError):
        text = (error.text or "").strip()
        return f"SyntaxError: {error.msg} at line {error.lineno}" + (f": {text}" if text else "")
    return str(error)


# --- checking one function -------------------------------------------------------------
def _check_function(functions: dict[str, Callable], name: str, seed: int) -> FunctionResult:
    kind, direction = FUNCTIONS[name]
    try:
        if direction == "forward":
            message = _check_forward(functions[name], kind, seed)
        else:
            forward = functions.get(FORWARD_OF[kind])
            if forward is None:
                raise _CannotCheckError(f"cannot be checked: needs {FORWARD_OF[kind]} (its "
                                        f"cache) to be defined")
            message = _check_backward(functions[name], forward, kind, seed)
        return FunctionResult(name, "pass", message)
    except _StubError as stub:
        return FunctionResult(name, "not implemented", str(stub))
    except NotImplementedError as stub:
        return FunctionResult(name, "not implemented", f"raises NotImplementedError{_where(stub)}")
    except _CannotCheckError as reason:
        return FunctionResult(name, "error", str(reason))
    except _CheckFailedError as failure:
        return FunctionResult(name, "fail", str(failure), failure.stage)
    except Exception as error:  # noqa: BLE001 - the student's code raised
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        return FunctionResult(name, "error", f"raised {text}{_where(error)}")


def _inputs(kind: str, seed: int, dtype: Any = np.float64) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    shape = SHAPES[kind]
    spec = norm_spec(kind, shape, eps=EPS, groups=GROUPS if kind == "group" else None)
    x = (2 * rng.standard_normal(shape) + 1).astype(dtype)
    gamma = (1 + 0.5 * rng.standard_normal(spec.param_shape)).astype(dtype)
    beta = rng.standard_normal(spec.param_shape).astype(dtype)
    if kind == "group":  # the assignment passes group norm's gamma and beta as (1, C, 1, 1)
        gamma, beta = gamma.reshape(spec.param_bshape), beta.reshape(spec.param_bshape)
    return spec, x, gamma, beta, rng.standard_normal(shape).astype(dtype)


def _call_forward(forward: Callable, kind: str, x: np.ndarray, gamma: np.ndarray,
                  beta: np.ndarray, param: dict) -> tuple[Any, Any]:
    if kind == "group":
        result = forward(x, gamma, beta, GROUPS, param)
    else:
        result = forward(x, gamma, beta, param)
    if result is None or not isinstance(result, tuple) or len(result) != 2 or result[0] is None:
        raise _StubError("returns no output yet (the assignment's stub)")
    return result


def _param(kind: str, mode: str = "train", **extra: Any) -> dict:
    if kind in ("batch", "spatial"):
        return {"mode": mode, "eps": EPS, "momentum": MOMENTUM, **extra}
    return {"eps": EPS, **extra}


def _staged_out(spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    nodes = staged_nodes(Node(x.astype(np.float64)), Node(gamma.astype(np.float64)),
                         Node(beta.astype(np.float64)), spec)
    return nodes["out"].data


def _check_forward(forward: Callable, kind: str, seed: int) -> str:
    for round_ in range(3):
        spec, x, gamma, beta, _ = _inputs(kind, seed + round_)
        originals = [a.copy() for a in (x, gamma, beta)]
        rng = np.random.default_rng(seed + 100 + round_)
        features = spec.param_shape[0] if kind != "layer" else None
        start = {}
        if kind in ("batch", "spatial"):
            start = {"running_mean": rng.standard_normal(features),
                     "running_var": rng.uniform(0.5, 2.0, features)}
        param = _param(kind, **{k: v.copy() for k, v in start.items()})
        out, _ = _call_forward(forward, kind, x, gamma, beta, param)
        _check_unmodified((x, gamma, beta), originals, ("x", "gamma", "beta"))
        out = np.asarray(out)
        if out.shape != x.shape:
            raise _CheckFailedError(f"out has shape {out.shape}, expected x's shape {x.shape}", "out")
        expected = _staged_out(spec, x, gamma, beta)
        error = scaled_error(out, expected)
        if not error <= TOLERANCE:
            message, stage = _forward_diagnosis(out, spec, x, gamma, beta)
            raise _CheckFailedError(f"train-mode out differs from the staged graph's (normwise error "
                           f"{error:.2g}){message}", stage)
        if kind in ("batch", "spatial"):
            _check_running_statistics(param, start, spec, x)
            _check_test_mode(forward, kind, spec, x, gamma, beta, start)
    # dtype kept: float32 in, float32 out
    spec, x, gamma, beta, _ = _inputs(kind, seed, np.float32)
    out, _ = _call_forward(forward, kind, x, gamma, beta, _param(kind))
    if np.asarray(out).dtype != np.float32:
        raise _CheckFailedError(f"float32 input gives {np.asarray(out).dtype} output: keep x's dtype",
                       "out")
    return "matches the staged graph (train and test mode, running statistics, dtype)" \
        if kind in ("batch", "spatial") else "matches the staged graph (output, dtype)"


def _check_unmodified(arrays: Iterable[np.ndarray], originals: Iterable[np.ndarray],
                      names: Iterable[str]) -> None:
    for array, original, name in zip(arrays, originals, names):
        if not np.array_equal(array, original, equal_nan=True):
            raise _CheckFailedError(f"modifies {name} in place")


def _check_running_statistics(param: dict, start: dict, spec: NormSpec, x: np.ndarray) -> None:
    stats_axes = spec.reduce_axes
    batch_mean = x.mean(axis=stats_axes)
    batch_var = x.var(axis=stats_axes)
    for key, batch in (("running_mean", batch_mean), ("running_var", batch_var)):
        if key not in param:
            raise _CheckFailedError(f"{key} is not written back into bn_param", "out")
        got = np.asarray(param[key])
        right = MOMENTUM * start[key] + (1 - MOMENTUM) * batch
        if got.shape == right.shape and scaled_error(got, right) <= TOLERANCE:
            continue
        reversed_ = (1 - MOMENTUM) * start[key] + MOMENTUM * batch
        if got.shape == right.shape and scaled_error(got, reversed_) <= TOLERANCE:
            raise _CheckFailedError(f"{key} = (1 - momentum) * {key} + momentum * batch: the momentum "
                           f"is used the wrong way round; the assignment's convention is "
                           f"{key} = momentum * {key} + (1 - momentum) * batch", "out")
        if key == "running_var":
            n = spec.count
            unbiased = MOMENTUM * start[key] + (1 - MOMENTUM) * batch * n / (n - 1)
            if got.shape == right.shape and scaled_error(got, unbiased) <= TOLERANCE:
                raise _CheckFailedError("running_var is updated with the unbiased variance (1/(N-1)); "
                               "batch norm keeps the biased one (1/N)", "var")
        raise _CheckFailedError(f"{key} after one train step is not momentum * {key} + (1 - momentum) "
                       f"* batch statistic (momentum {MOMENTUM})", "out")


def _check_test_mode(forward: Callable, kind: str, spec: NormSpec, x: np.ndarray,
                     gamma: np.ndarray, beta: np.ndarray, start: dict) -> None:
    param = _param(kind, "test", **{k: v.copy() for k, v in start.items()})
    out, _ = _call_forward(forward, kind, x, gamma, beta, param)
    shape = spec.param_bshape
    expected = gamma.reshape(shape) * (x - start["running_mean"].reshape(shape)) / np.sqrt(
        start["running_var"].reshape(shape) + EPS) + beta.reshape(shape)
    if not scaled_error(np.asarray(out), expected) <= TOLERANCE:
        raise _CheckFailedError("test-mode out is not gamma * (x - running_mean) / sqrt(running_var + "
                       "eps) + beta", "out")
    for key in ("running_mean", "running_var"):
        if not np.array_equal(np.asarray(param.get(key)), start[key]):
            raise _CheckFailedError(f"test mode changes {key}: only train mode updates it", "out")


def _forward_diagnosis(out: np.ndarray, spec: NormSpec, x: np.ndarray, gamma: np.ndarray,
                       beta: np.ndarray) -> tuple[str, str | None]:
    """Which common slip gives the student's output, if one does."""
    axes, eps, n = spec.reduce_axes, spec.eps, spec.count
    xs = spec.grouped(x.astype(np.float64))
    mean = xs.mean(axis=axes, keepdims=True)
    var = ((xs - mean) ** 2).mean(axis=axes, keepdims=True)
    g, b = gamma.reshape(spec.param_bshape), beta.reshape(spec.param_bshape)

    def out_with(xhat: np.ndarray) -> np.ndarray:
        return g * xhat.reshape(spec.x_shape) + b

    candidates = [
        (out_with((xs - mean) / np.sqrt(var * n / max(n - 1, 1) + eps)), "var",
         ": it matches the unbiased variance (1/(N-1)); batch norm uses the biased one (1/N)"),
        (out_with((xs - mean) / (np.sqrt(var) + eps)), "var_eps",
         ": it matches eps added outside the square root; it belongs inside, sqrt(var + eps)"),
        (out_with((xs - mean) / np.sqrt(var)), "var_eps", ": it matches eps left out"),
        (out_with((xs - mean) / (var + eps)), "sqrtvar",
         ": it matches dividing by var + eps; divide by sqrt(var + eps)"),
        (b * ((xs - mean) / np.sqrt(var + eps)).reshape(spec.x_shape) + g, "gammax",
         ": it matches gamma and beta swapped"),
    ]
    for candidate, stage, text in candidates:
        if candidate.shape == out.shape and scaled_error(out, candidate) <= TOLERANCE:
            return text, stage
    return "", None


def _arrays_in(value: Any, prefix: str = "cache") -> list[tuple[str, np.ndarray]]:
    """Every numpy array a cache holds (tuples, lists and dicts walked), with its place."""
    if isinstance(value, np.ndarray):
        return [(prefix, value)]
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in _arrays_in(v, f"{prefix}[{i}]")]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _arrays_in(v, f"{prefix}[{k!r}]")]
    return []


def _check_backward(backward: Callable, forward: Callable, kind: str, seed: int) -> str:
    for round_ in range(3):
        spec, x, gamma, beta, dout = _inputs(kind, seed + round_)
        try:
            _, cache = _call_forward(forward, kind, x.copy(), gamma, beta, _param(kind))
        except (_StubError, NotImplementedError):
            raise _CannotCheckError(f"cannot be checked: {FORWARD_OF[kind]}, whose cache it "
                                    f"takes, is not implemented yet") from None
        held = [(place, array, array.copy()) for place, array in _arrays_in(cache)]
        dout_copy = dout.copy()
        result = backward(dout, cache)
        if result is None or not isinstance(result, tuple) or len(result) != 3 \
                or any(r is None for r in result):
            raise _StubError("returns no gradients yet (the assignment's stub)")
        if not np.array_equal(dout, dout_copy):
            raise _CheckFailedError("modifies dout in place: the caller's upstream gradient changes; "
                           "work on a copy or on new arrays")
        for place, array, copy in held:
            if not np.array_equal(array, copy, equal_nan=True):
                raise _CheckFailedError(f"modifies the cache's arrays in place ({place}): a second "
                               f"backward with the same cache would be wrong")
        student = tuple(np.asarray(r, dtype=np.float64) for r in result)
        correct = staged_gradients(x, gamma, beta, dout, spec)
        correct = (correct[0], correct[1].reshape(gamma.shape), correct[2].reshape(beta.shape))
        _check_shapes(student, correct, spec, x, gamma, beta, dout)
        errors = {name: scaled_error(s, c) for name, s, c in zip(("dx", "dgamma", "dbeta"),
                                                                   student, correct)}
        if all(error <= TOLERANCE for error in errors.values()):
            continue
        flat = (student[0], student[1].reshape(-1), student[2].reshape(-1))
        departure = find_departure(flat, x, gamma.reshape(-1), beta.reshape(-1), dout, spec)
        if departure is not None:
            raise _CheckFailedError(describe_departure(departure), departure.stage)
        wrong = ", ".join(f"{name} (normwise error {error:.2g})" for name, error in errors.items()
                          if not error <= TOLERANCE)
        right = [name for name, error in errors.items() if error <= TOLERANCE]
        raise _CheckFailedError(f"wrong: {wrong}" + (f"; {' and '.join(right)} right" if right else "")
                       + ". No single cut or rescaled step of the staged graph explains it: "
                       "compare your intermediates with `tinygrad-bn explain --values`")
    return "dx, dgamma, dbeta match the staged graph on 3 random inputs; nothing modified in place"


def _check_shapes(student: tuple[np.ndarray, ...], correct: tuple[np.ndarray, ...],
                  spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                  dout: np.ndarray) -> None:
    names = ("dx", "dgamma", "dbeta")
    stages = ("xmu", "gammax", "out")
    for name, stage, s, c in zip(names, stages, student, correct):
        if s.shape == c.shape:
            continue
        hint = ""
        if name != "dx":
            xhat = _staged_xhat(spec, x, gamma, beta)
            terms = dout * xhat if name == "dgamma" else dout
            for axis in range(terms.ndim):
                if terms.sum(axis=axis).shape == s.shape and \
                        scaled_error(terms.sum(axis=axis), s) <= TOLERANCE:
                    hint = (f": it is the sum over axis {axis}; {name} sums over the axes "
                            f"{spec.param_sum_axes} that {name[1:]} does not have")
                    break
        if name == "dx":
            raise _CheckFailedError(f"dx has shape {s.shape}, expected x's shape {c.shape}", stage)
        if s.size == c.size and scaled_error(s.reshape(c.shape), c) <= TOLERANCE:
            raise _CheckFailedError(f"{name} has the right values in shape {s.shape}; expected "
                                    f"{c.shape}, {name[1:]}'s own shape (keepdims=True?)", stage)
        hint = hint or " (a sum over the wrong axis?)"
        raise _CheckFailedError(f"{name} has shape {s.shape}, expected {c.shape}{hint}", stage)


def _staged_xhat(spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    nodes = staged_nodes(Node(x), Node(gamma), Node(beta), spec)
    return nodes["xhat"].data.reshape(spec.x_shape)

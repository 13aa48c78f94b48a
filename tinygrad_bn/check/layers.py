"""Check a student's own CS231n `layers.py` against the staged graphs.

    report = check_layers("cs231n/layers.py")     # a path, an imported module, or a dict
    print(report); report.ok
    result = report.results["batchnorm_backward"]
    result.status, result.diagnosis, result.line, result.variable, result.stages

Every function the source defines among FUNCTIONS is called with the assignment's
signature on several random inputs and judged by its values against the staged graph: a
forward in parts (train-mode output, running statistics, test-mode output; a float32
input returned in float64 is a warning), a backward's dx, dgamma, dbeta (from the cache of
the student's own forward; each judged on its own), and that no input is modified in place.
Layouts a student may choose pass: running statistics of shape (1, D), lists for tuples.

A wrong function is run again under a line tracer and its own intermediates are matched
against the catalogue of correct quantities (`catalogue.py`, `locate.py`): `result.line`
and `result.variable` name the first line whose value departs, the sentence says what it
should be and which known slip it matches. `result.stages` is the per-stage record: one
`StageMatch` per correct quantity (name, formula, line, variable, function, value,
expected, matches, departure), `result.to_dict()` the whole result as JSON-friendly data.

Each function is judged in a child process (`sandbox.py`): own process group killed at the
verdict, time and address-space limits, output captured, no pickle back.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import pathlib
import re
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.node import Node
from ..norm import NormSpec, norm_spec, staged_nodes
from .catalogue import build_catalogue, build_test_catalogue
from .diagnose import describe_departure, find_departure, staged_gradients
from .gradcheck import scaled_error
from .locate import StageMatch, locate_departure, stage_records
from .sandbox import mark_running, run_isolated
from .trace import LineTracer

__all__ = ["FUNCTIONS", "FunctionResult", "LayersReport", "check_layers", "DEFAULT_MEMORY"]

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
FLOAT32_TOLERANCE = 1e-4
DEFAULT_MEMORY = 4 * 2**30  # address space per child, bytes
# Course modules normalization never needs; a file importing them loads with a stub.
COURSE_MODULES = ("im2col", "im2col_cython", "fast_layers", "layer_utils", "rnn_layers",
                  "data_utils", "solver", "optim", "gradient_check", "classifiers", "vis_utils")
GRAD_NAMES = ("dx", "dgamma", "dbeta")


class _StubError(Exception):
    """The assignment's stub: it returns None or raises NotImplementedError."""


class _CheckFailedError(Exception):
    """A check failed; the message is the diagnosis (and `stage` the step, when known)."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class _StudentExitError(Exception):
    """The student's code raised a BaseException that is not an Exception (sys.exit, ...)."""


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
    parts: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    output: str = ""
    stages: list[StageMatch] = field(default_factory=list)
    case: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

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
                "function": self.function, "variant": self.variant, "parts": dict(self.parts),
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

    @property
    def ok(self) -> bool:
        """True when the source loads and every function it defines passes."""
        return self.error is None and bool(self.results) and all(
            r.ok for r in self.results.values())

    def save_case(self, path: str | os.PathLike) -> str | None:
        """Write the first failing function's case to an .npz file (inputs, the student's
        outputs, every correct stage value and gradient); its name, or None if none fails."""
        for name, result in self.results.items():
            if result.status == "fail" and result.case:
                arrays = {k: np.asarray(v) for k, v in result.case.items()}
                arrays["function"] = np.array(name)
                np.savez(path, **arrays)
                return name
        return None

    def _repr_markdown_(self) -> str:
        """The verdicts as a Markdown table (how Jupyter shows it)."""
        if self.error is not None:
            return f"**{self.source}** cannot be loaded: {self.error}"
        lines = [f"**{self.source}** against the staged graphs", "",
                 "| function | status | line | diagnosis |", "|---|---|---|---|"]
        for name, result in self.results.items():
            diagnosis = result.diagnosis.replace("|", "\\|")
            lines.append(f"| {name} | {result.status} | {result.line or ''} | {diagnosis} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [f"checking {self.source} against the staged graphs"]
        lines += [f"note: {note}" for note in self.notes]
        if self.error is not None:
            lines.append(f"cannot load it: {self.error}")
            return "\n".join(lines)
        for name, similar in self.missing.items():
            lines.append(f"{name}: not found; did you mean {similar}? map it with "
                         f"--function {name}={similar}")
        if not self.results and not self.missing:
            lines.append("it defines none of: " + ", ".join(FUNCTIONS))
        width = max((len(name) for name in self.results), default=0)
        for name, result in self.results.items():
            stage = f" [stage {result.stage}]" if result.stage else ""
            lines.append(f"{name:<{width}}  {result.status.upper():<15}{stage} {result.diagnosis}")
            lines += [f"{'':<{width}}  warning: {w}" for w in result.warnings]
            if result.output:
                text = result.output.rstrip("\n").replace("\n", "\n" + " " * (width + 4) + "| ")
                lines.append(f"{'':<{width}}  it printed:\n{' ' * (width + 4)}| {text}")
        passed = sum(r.ok for r in self.results.values())
        lines.append(f"{passed} of {len(self.results)} functions pass"
                     + ("" if self.ok or not self.results else
                        "; `tinygrad-bn check --save-case case.npz` then `tinygrad-bn explain "
                        "--values --load case.npz` shows every stage on the same data"))
        return "\n".join(lines)


def check_layers(source: Any, *, only: Iterable[str] | None = None, seed: int = 0,
                 timeout: float = 60.0, memory: int | None = DEFAULT_MEMORY,
                 functions: dict[str, str] | None = None) -> LayersReport:
    """Judge the normalization functions of `source` (a path to a .py file, a module, or a
    dict of functions) against the staged graphs.

    only: the names to check (default all the source defines); timeout: seconds each
    function may take; memory: bytes of address space each may add to what the calling process
    maps (None: no limit);
    functions: assignment name -> the name it has in the source
    ({"batchnorm_forward": "batchnormForward"})."""
    mapping = dict(functions or {})
    for key in mapping:
        if key not in FUNCTIONS:
            raise ValueError(f"functions: expected keys among {', '.join(FUNCTIONS)}, got {key!r}")
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"source: no such file {str(path)!r}")
        label = str(path)
        loader = student_loader(path.resolve(), mapping)
    elif isinstance(source, types.ModuleType):
        label = getattr(source, "__file__", None) or source.__name__
        loader = _from_namespace(vars(source), mapping)
    elif isinstance(source, dict):
        label = "the given functions"
        loader = _from_namespace(source, mapping)
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
    loaded = run_isolated(lambda: _loaded_names(loader), timeout, memory)
    if loaded.failure is not None:
        report.error = _process_failure_text(loaded, timeout, memory, loading=True)
        return report
    info = loaded.value
    if info.get("syntax"):
        report.error = info["syntax"]
        return report
    if info.get("error"):
        report.error = info["error"]
        return report
    report.notes = list(info["notes"])
    report.missing = {k: v for k, v in info["missing"].items() if k in wanted}
    defined = info["defined"]
    for name in (n for n in FUNCTIONS if n in wanted and n in defined):
        outcome = run_isolated(lambda name=name: _judge(loader, name, seed), timeout, memory)
        if outcome.failure is not None:
            result = FunctionResult(name, "error",
                                    _process_failure_text(outcome, timeout, memory, name=name))
        else:
            result = _result_from(outcome.value)
        result.output = outcome.output
        report.results[name] = result
    return report


# --- loading -----------------------------------------------------------------------------
def _assignment_root(path: pathlib.Path) -> list[str]:
    """The folders to put on sys.path: the one above `cs231n/` (so `from cs231n.x import y`
    works whatever the entry point), and the file's own."""
    folders = [str(path.parent)]
    for parent in path.parents:
        if parent.name == "cs231n":
            folders.insert(0, str(parent.parent))
            break
    return folders


class _StubModule(types.ModuleType):
    """A course module normalization does not need: any name it is asked for is a function
    that says so when called."""

    __all__: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise ImportError(f"{self.__name__}.{name} is not available to the checker")
        return unavailable


def student_loader(path: pathlib.Path, mapping: dict[str, str]
                   ) -> Callable[[], tuple[dict[str, Callable], list[str], dict[str, str]]]:
    """A loader (run in the sandbox's child) of the student's file at `path`: it puts the
    folder above `cs231n/` on the path, stubs missing course modules, applies `mapping`
    (checked name -> the student's name) and returns (functions, notes, suggestions of names
    for functions not found)."""
    def load() -> tuple[dict[str, Callable], list[str], dict[str, str]]:
        for folder in reversed(_assignment_root(path)):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        notes: list[str] = []
        for _ in range(20):  # one stub per missing course module
            spec = importlib.util.spec_from_file_location("student_layers", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["student_layers"] = module
            try:
                spec.loader.exec_module(module)
                break
            except ModuleNotFoundError as error:
                missing = error.name or ""
                if missing.split(".")[-1] not in COURSE_MODULES:
                    raise
                _install_stub(missing)
                notes.append(f"{missing} not found: loaded with it stubbed (normalization does "
                             f"not need it)")
        found, suggestions = _pick(vars(module), mapping)
        return found, notes, suggestions
    return load


def _install_stub(name: str) -> None:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix not in sys.modules:
            try:
                importlib.import_module(prefix)
                continue
            except ImportError:
                pass
            stub = _StubModule(prefix)
            stub.__path__ = []  # a package, so that submodules can be stubbed too
            sys.modules[prefix] = stub
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], stub)


def _pick(namespace: dict, mapping: dict[str, str]) -> tuple[dict[str, Callable], dict[str, str]]:
    """The assignment's functions in `namespace` (under their own or their mapped names), and
    for each one missing, the similar name the namespace has."""
    found: dict[str, Callable] = {}
    for name in FUNCTIONS:
        own = mapping.get(name, name)
        if callable(namespace.get(own)):
            found[name] = namespace[own]
    suggestions: dict[str, str] = {}
    candidates = {re.sub(r"[^a-z]", "", k.lower()): k for k, v in namespace.items()
                  if callable(v) and not k.startswith("_") and k not in FUNCTIONS}
    for name in FUNCTIONS:
        if name in found:
            continue
        key = re.sub(r"[^a-z]", "", name.lower())
        close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.85)
        if close:
            suggestions[name] = candidates[close[0]]
    return found, suggestions


def _from_namespace(namespace: dict, mapping: dict[str, str]
                    ) -> Callable[[], tuple[dict[str, Callable], list[str], dict[str, str]]]:
    found, suggestions = _pick(namespace, mapping)
    return lambda: (found, [], suggestions)


def _loaded_names(loader: Callable) -> dict[str, Any]:
    try:
        functions, notes, missing = loader()
    except SyntaxError as error:
        text = (error.text or "").strip()
        return {"syntax": f"SyntaxError: {error.msg} at line {error.lineno}"
                          + (f": {text}" if text else "")}
    except BaseException as error:  # noqa: BLE001 - the file's own code failed
        return {"error": _exception_text(error)}
    return {"defined": sorted(functions), "notes": notes, "missing": missing}


def _process_failure_text(outcome: Any, timeout: float, memory: int | None,
                          name: str | None = None, loading: bool = False) -> str:
    running = outcome.running or name or "the file's top level"
    what = "loading it" if loading else f"while running {running}"
    if outcome.failure == "timeout":
        if loading:
            return (f"loading it timed out after {timeout:g} s (while running "
                    f"{outcome.running or 'its top level'})")
        return f"timed out after {timeout:g} s while running {running} (an endless loop? a sleep?)"
    if outcome.failure == "signal":
        extra = " (the memory limit?)" if outcome.signal_name == "SIGKILL" and memory else ""
        return f"your code was killed by {outcome.signal_name} {what}{extra}"
    if outcome.failure == "exit":
        return (f"your code ended the process (exit code {outcome.code}) {what}: os._exit or "
                f"a crash in compiled code?")
    if outcome.failure == "raised":
        return f"the check itself failed {what}: {outcome.error}"
    return f"{outcome.error} {what}"


def _exception_text(error: BaseException) -> str:
    import traceback
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    if isinstance(error, SystemExit):
        text = f"calls sys.exit({error.code!r})"
    elif isinstance(error, MemoryError):
        text = "raised MemoryError (the check allows each function a limited address space; " \
               "see --memory)"
    elif not isinstance(error, Exception):
        text = f"raised {text}"
    else:
        text = f"raised {text}"
    return text + _where(error)


def _where(error: BaseException) -> str:
    import traceback
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "tinygrad_bn" not in f.filename.replace("\\", "/").split("/")]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (line {frame.lineno}: {frame.line.strip() if frame.line else ''})"


def _result_from(data: dict[str, Any]) -> FunctionResult:
    stages = [StageMatch(**{k: (np.asarray(v) if k in ("value", "expected") and v is not None
                                else v) for k, v in s.items()}) for s in data.pop("stages", [])]
    case = {k: np.asarray(v) for k, v in data.pop("case", {}).items()}
    return FunctionResult(**data, stages=stages, case=case)


# --- judging one function (in the child) -----------------------------------------------------
def _judge(loader: Callable, name: str, seed: int) -> dict[str, Any]:
    functions = loader()[0]
    kind, direction = FUNCTIONS[name]
    result: dict[str, Any] = {"name": name, "status": "pass", "diagnosis": ""}
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
    except _StubError as stub:
        result.update(status="not implemented", diagnosis=str(stub))
    except _CheckFailedError as failure:
        result.update(status="fail", diagnosis=str(failure), stage=failure.stage)
    except _StudentExitError as error:
        result.update(status="error", diagnosis=str(error))
    except NotImplementedError as stub:
        result.update(status="not implemented", diagnosis=f"raises NotImplementedError{_where(stub)}")
    except Exception as error:  # noqa: BLE001 - the student's code raised
        result.update(status="error", diagnosis=_exception_text(error))
    if "stages" in result:
        result["stages"] = [s.__dict__ for s in result["stages"]]
    return result


def _call(function: Callable, label: str, *args: Any, tracer: LineTracer | None = None) -> Any:
    """function(*args), under the tracer if given; builtins the student's code replaces are
    put back afterwards, so the judging that follows uses the real ones."""
    import builtins
    namespace = vars(builtins)
    kept = dict(namespace)
    mark_running(label)
    try:
        return tracer.run(function, *args) if tracer is not None else function(*args)
    except Exception:
        raise
    except BaseException as error:  # sys.exit, KeyboardInterrupt, ...: the student's
        raise _StudentExitError(_exception_text(error)) from None
    finally:
        if namespace != kept:
            namespace.clear()
            namespace.update(kept)


def case_inputs(kind: str, seed: int, dtype: Any = np.float64) -> tuple[Any, ...]:
    """The inputs the checker judges normalization `kind` on: (spec, x, gamma, beta, dout)."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[kind]
    spec = norm_spec(kind, shape, eps=EPS, groups=GROUPS if kind == "group" else None)
    x = (2 * rng.standard_normal(shape) + 1).astype(dtype)
    gamma = (1 + 0.5 * rng.standard_normal(spec.param_shape)).astype(dtype)
    beta = rng.standard_normal(spec.param_shape).astype(dtype)
    if kind == "group":  # the assignment passes group norm's gamma and beta as (1, C, 1, 1)
        gamma, beta = gamma.reshape(spec.param_bshape), beta.reshape(spec.param_bshape)
    return spec, x, gamma, beta, rng.standard_normal(shape).astype(dtype)


def _forward_call(forward: Callable, label: str, kind: str, x: np.ndarray, gamma: np.ndarray,
                  beta: np.ndarray, param: dict, tracer: LineTracer | None = None) -> tuple[Any, Any]:
    args = (x, gamma, beta, GROUPS, param) if kind == "group" else (x, gamma, beta, param)
    result = _call(forward, label, *args, tracer=tracer)
    if result is None or not isinstance(result, (tuple, list)) or len(result) != 2 \
            or result[0] is None:
        raise _StubError("returns no output yet (the assignment's stub)")
    return result[0], result[1]


def _param(kind: str, mode: str = "train", **extra: Any) -> dict:
    if kind in ("batch", "spatial"):
        return {"mode": mode, "eps": EPS, "momentum": MOMENTUM, **extra}
    return {"eps": EPS, **extra}


def _seeded(kind: str, start: dict[str, np.ndarray], layout: tuple[int, ...] | None,
            mode: str = "train") -> dict:
    """bn_param holding running statistics `start`, in the layout the student's own train
    step stores them in ((D,), (1, D), (1, C, 1, 1), ...), so that a layout the student
    chose comes back to their code as they would have it."""
    def shaped(value: np.ndarray) -> np.ndarray:
        value = value.copy()
        return value.reshape(layout) if layout is not None else value
    return _param(kind, mode, **{k: shaped(v) for k, v in start.items()})


def _running_layout(forward: Callable, name: str, kind: str, spec: NormSpec, seed: int
                    ) -> tuple[tuple[int, ...] | None, int | None]:
    """(shape, size) of the running_mean the forward's first train step stores (given
    bn_param without running statistics, as the assignment's first call does); the shape
    only when it holds one value per feature; (None, None) when it stores none."""
    if kind not in ("batch", "spatial"):
        return None, None
    _, x, gamma, beta, _ = case_inputs(kind, seed)
    param = _param(kind)
    try:
        _forward_call(forward, name, kind, x, gamma, beta, param)
    except Exception:  # noqa: BLE001 - judged by the calls that follow
        return None, None
    value = param.get("running_mean")
    if not isinstance(value, np.ndarray):
        return None, None
    return (tuple(value.shape) if value.size == spec.param_shape[0] else None), value.size


def _start(kind: str, spec: NormSpec, seed: int) -> dict[str, np.ndarray]:
    if kind not in ("batch", "spatial"):
        return {}
    rng = np.random.default_rng(seed + 100)
    features = spec.param_shape[0]
    return {"running_mean": rng.standard_normal(features),
            "running_var": rng.uniform(0.5, 2.0, features)}


def _staged_out(spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    nodes = staged_nodes(Node(x.astype(np.float64)), Node(gamma.astype(np.float64)),
                         Node(beta.astype(np.float64)), spec)
    return nodes["out"].data


def _array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _CheckFailedError(f"{what} is not an array of numbers (got "
                                f"{type(value).__name__})") from None
    return array


def _student_file(function: Callable) -> str | None:
    code = getattr(function, "__code__", None)
    return None if code is None else code.co_filename


def _judge_forward(forward: Callable, name: str, kind: str, seed: int,
                   result: dict[str, Any]) -> None:
    parts: dict[str, str] = {}
    problems: list[tuple[str, str | None]] = []
    train_wrong = False
    layout, held = _running_layout(forward, name, kind, case_inputs(kind, seed)[0], seed)
    features = case_inputs(kind, seed)[0].param_shape[0]
    for round_ in range(3):
        spec, x, gamma, beta, _ = case_inputs(kind, seed + round_)
        originals = [a.copy() for a in (x, gamma, beta)]
        start = _start(kind, spec, seed + round_)
        if held is not None and held != features:
            # its running statistics hold another number of values than one per feature:
            # the train output is judged as the assignment's first call gets it
            start = {}
        param = _seeded(kind, start, layout)
        out, _ = _forward_call(forward, name, kind, x, gamma, beta, param)
        _check_unmodified((x, gamma, beta), originals, ("x", "gamma", "beta"))
        out = _array(out, "out")
        if out.shape != x.shape:
            raise _CheckFailedError(f"out has shape {out.shape}, expected x's shape {x.shape}"
                                    + _shape_line(forward, name, kind, seed + round_, result),
                                    "out")
        error = scaled_error(out, _staged_out(spec, x, gamma, beta))
        if not error <= TOLERANCE:
            parts["train"] = "wrong"
            train_wrong = True
            message = _trace_forward(forward, name, kind, seed + round_, result, "out", layout,
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
                where = _trace_forward(forward, name, kind, seed + round_, result,
                                       "running_mean" if "running_mean" in text.split(" ")[0]
                                       else "running_var", layout)
                problems.append((text + where, "out"))
                break
            parts["running statistics"] = "right"
    foreign = held is not None and held != features  # running statistics in no known layout
    if kind in ("batch", "spatial") and not train_wrong and not foreign:
        spec, x, gamma, beta, _ = case_inputs(kind, seed)
        parts["test"], text = _test_mode(forward, name, kind, spec, x, gamma, beta,
                                         _start(kind, spec, seed), layout, result)
        if text:
            problems.append((text, "out" if parts["test"] == "wrong" else None))
    if not train_wrong:
        spec, x, gamma, beta, _ = case_inputs(kind, seed, np.float32)
        out, _ = _forward_call(forward, name, kind, x, gamma, beta,
                               _seeded(kind, {} if foreign else _start(kind, spec, seed), layout))
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


def _check_unmodified(arrays: Iterable[np.ndarray], originals: Iterable[np.ndarray],
                      names: Iterable[str]) -> None:
    for array, original, name in zip(arrays, originals, names):
        if not np.array_equal(array, original, equal_nan=True):
            raise _CheckFailedError(f"modifies {name} in place")


def _running_statistics(param: dict, start: dict, spec: NormSpec, x: np.ndarray) -> str | None:
    """None when the running statistics hold the right values (in any shape), else why not."""
    batch = {"running_mean": x.mean(axis=spec.reduce_axes),
             "running_var": x.var(axis=spec.reduce_axes)}
    for key, stat in batch.items():
        if key not in param:
            return f"{key} is not written back into bn_param"
        got = _array(param[key], key)
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
    param = _seeded(kind, start, layout, "test")
    try:
        out, _ = _forward_call(forward, name, kind, x, gamma, beta, param)
    except (_StubError, NotImplementedError):
        return "not implemented", "test mode not implemented yet (it returns no output)"
    except _StudentExitError:
        raise
    except Exception as error:  # noqa: BLE001 - the student's test mode raised: a wrong part
        return "wrong", f"test mode {_exception_text(error)}"
    shape = spec.param_bshape
    expected = gamma.reshape(shape) * (x - start["running_mean"].reshape(shape)) / np.sqrt(
        start["running_var"].reshape(shape) + EPS) + beta.reshape(shape)
    out = _array(out, "test-mode out")
    if out.shape != expected.shape or not scaled_error(out, expected) <= TOLERANCE:
        where = "" if result is None else _trace_test(forward, name, kind, spec, x, gamma, beta,
                                                      start, layout, result)
        if out.shape == expected.shape and scaled_error(out, _staged_out(spec, x, gamma, beta)) \
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


def _shape_line(forward: Callable, name: str, kind: str, seed: int, result: dict[str, Any]) -> str:
    """For an output in the wrong shape: the first line of the forward that makes an array
    with more axes than x, or else the line of the returned out."""
    filename = _student_file(forward)
    if filename is None:
        return ""
    spec, x, gamma, beta, _ = case_inputs(kind, seed)
    tracer = LineTracer(filename)
    try:
        out, _ = _forward_call(forward, name, kind, x, gamma, beta, _param(kind), tracer)
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
    filename = _student_file(backward)
    if filename is None:
        return None
    spec, x, gamma, beta, dout = case_inputs(kind, seed)
    tracer = LineTracer(filename)
    try:
        out, cache = _forward_call(forward, FORWARD_OF[kind], kind, x.copy(), gamma, beta,
                                   _param(kind), tracer if trace_forward else None)
        split = len(tracer.snapshots)
        raw = _backward_call(backward, name, dout, cache, tracer)
    except Exception:  # noqa: BLE001 - judged already; the trace only adds a line
        return None
    return _TracedRun(spec, x, gamma, beta, dout, tracer, out, split, raw)


def _grad_line(backward: Callable, forward: Callable, name: str, kind: str, seed: int,
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


def _assigned_text(function: Callable, places: list[int], result: dict[str, Any]) -> str:
    """For returned values that are no arrays of the right size (`dx = 0` left from the
    template): the line that last assigns each, read from the function's source."""
    import ast
    import inspect
    import textwrap
    try:
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


def _trace_test(forward: Callable, name: str, kind: str, spec: NormSpec, x: np.ndarray,
                gamma: np.ndarray, beta: np.ndarray, start: dict,
                layout: tuple[int, ...] | None, result: dict[str, Any]) -> str:
    """Test mode again under the tracer; fill result's line fields; the sentence."""
    filename = _student_file(forward)
    if filename is None:
        return ""
    tracer = LineTracer(filename)
    try:
        out, _ = _forward_call(forward, name, kind, x, gamma, beta,
                               _seeded(kind, start, layout, "test"), tracer)
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


def _trace_forward(forward: Callable, name: str, kind: str, seed: int, result: dict[str, Any],
                   output: str, layout: tuple[int, ...] | None = None,
                   seeded: bool = True) -> str:
    """Run the forward again under the tracer; fill result's line fields; the sentence."""
    filename = _student_file(forward)
    if filename is None:
        return ""
    spec, x, gamma, beta, dout = case_inputs(kind, seed)
    start = _start(kind, spec, seed) if seeded else {}
    tracer = LineTracer(filename)
    param = _seeded(kind, start, layout)
    try:
        out, _ = _forward_call(forward, name, kind, x, gamma, beta, param, tracer)
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
    result["case"] = _case(kind, spec, x, gamma, beta, dout, catalogue, {"out": out})
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


def _case(kind: str, spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
          dout: np.ndarray, catalogue: Any, student: dict[str, Any]) -> dict[str, np.ndarray]:
    case = {"kind": kind, "eps": np.array(spec.eps),
            "groups": np.array(GROUPS if kind == "group" else 0), "x": x, "gamma": gamma,
            "beta": beta, "dout": dout}
    for key, value in student.items():
        try:
            case[f"student_{key}"] = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    for quantity in catalogue.correct():
        case[f"correct_{quantity.name}"] = quantity.value
    return case


def _arrays_in(value: Any, prefix: str = "cache") -> list[tuple[str, np.ndarray]]:
    """Every numpy array a cache holds (tuples, lists and dicts walked), with its place."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [item for i, v in enumerate(value.ravel())
                    for item in _arrays_in(v, f"{prefix}[{i}]")]
        return [(prefix, value)]
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in _arrays_in(v, f"{prefix}[{i}]")]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _arrays_in(v, f"{prefix}[{k!r}]")]
    return []


def _backward_call(backward: Callable, name: str, dout: np.ndarray, cache: Any,
                   tracer: LineTracer | None = None) -> tuple[Any, Any, Any]:
    result = _call(backward, name, dout, cache, tracer=tracer)
    if result is None or not isinstance(result, (tuple, list)) or len(result) != 3 \
            or any(r is None for r in result):
        raise _StubError("returns no gradients yet (the assignment's stub)")
    return tuple(result)  # type: ignore[return-value]


def _judge_backward(backward: Callable, forward: Callable, name: str, kind: str, seed: int,
                    result: dict[str, Any]) -> None:
    forward_name = FORWARD_OF[kind]
    for round_ in range(3):
        spec, x, gamma, beta, dout = case_inputs(kind, seed + round_)
        try:
            _, cache = _forward_call(forward, forward_name, kind, x.copy(), gamma, beta,
                                     _param(kind))
        except (_StubError, NotImplementedError):
            raise _StubError(f"not implemented: {forward_name}, whose cache it takes, is not "
                             f"implemented yet") from None
        held = [(place, array, array.copy()) for place, array in _arrays_in(cache)]
        dout_copy = dout.copy()
        raw = _backward_call(backward, name, dout, cache)
        if not np.array_equal(dout, dout_copy):
            raise _CheckFailedError("modifies dout in place: the caller's upstream gradient "
                                    "changes; work on a copy or on new arrays")
        for place, array, copy in held:
            if not np.array_equal(array, copy, equal_nan=True):
                raise _CheckFailedError(f"modifies the cache's arrays in place ({place}): a "
                                        f"second backward with the same cache would be wrong")
        student = [_array(r, n) for r, n in zip(raw, GRAD_NAMES)]
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
            sentence = _grad_line(backward, forward, name, kind, seed + round_, shaped, result)
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
            sentence = _assigned_text(backward, [GRAD_NAMES.index(g) for g in misshapen], result)
        if not sentence and wrong_values:
            sentence = (". No line of yours matches a known slip: compare your intermediates "
                        "with `tinygrad-bn explain --values --load` on the saved case")
        result.setdefault("stage", stage)
        if result.get("stage") is None:
            result["stage"] = stage
        raise _CheckFailedError(text + ("" if not sentence else
                                        (sentence if sentence.startswith((".", " ")) else ". " + sentence)),
                                result["stage"])
    result["diagnosis"] = ("dx, dgamma, dbeta match the staged graph on 3 random inputs; nothing "
                           "modified in place")


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
        if out.shape == x.shape and not scaled_error(out, _staged_out(spec, x, gamma, beta)) \
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
    result["case"] = _case(kind, spec, x, gamma, beta, dout, catalogue,
                           dict(zip(GRAD_NAMES, raw)))
    if departure is None:
        return ""
    result.update(line=departure.line, variable=departure.variable, function=departure.function,
                  variant=departure.variant, stage=departure.stage)
    return ". " + departure.sentence[0].upper() + departure.sentence[1:]

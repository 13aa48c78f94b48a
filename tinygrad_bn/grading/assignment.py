"""The assignment's side of a check: which functions are judged, the inputs and bn_param each
is called with, the calls themselves (a student's exception, exit or stub told apart from a
wrong value), and what a verdict compares with (the staged graph's output).

The judging (`judge.py`), the line finding (`lines.py`) and the report (`layers.py`) all call
the student's code through `call_forward` and `call_backward`, on `case_inputs`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.node import Node
from ..norm import NormSpec, norm_spec, staged_nodes
from .agree import TOLERANCE as AGREEMENT
from .sandbox import mark_running
from .trace import LineTracer

__all__ = ["FUNCTIONS", "FORWARD_OF", "SHAPES", "GROUPS", "EPS", "MOMENTUM", "TOLERANCE",
           "FLOAT32_TOLERANCE", "GRAD_NAMES", "StubError", "CheckFailedError", "StudentExitError",
           "exception_text", "student_frame", "case_inputs", "call_forward", "bn_param_for",
           "seeded_bn_param", "running_layout", "running_start", "staged_out", "float_array",
           "student_file", "saved_case", "arrays_in", "call_backward"]


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


# normwise; the inputs are well conditioned (N >= 4 values per statistic); one notion of
# agreement for verdicts and traced lines alike
TOLERANCE = AGREEMENT


FLOAT32_TOLERANCE = 1e-4


GRAD_NAMES = ("dx", "dgamma", "dbeta")


class StubError(Exception):
    """The assignment's stub: it returns None or raises NotImplementedError."""


class CheckFailedError(Exception):
    """A check failed; the message is the diagnosis (and `stage` the step, when known)."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class StudentExitError(Exception):
    """The student's code raised a BaseException that is not an Exception (sys.exit, ...)."""


def exception_text(error: BaseException) -> str:
    import traceback
    if hasattr(error, "replayed_text"):  # raised in the box; its text was written there
        return str(error.replayed_text)
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
    return text + student_frame(error)


def student_frame(error: BaseException) -> str:
    import traceback
    if hasattr(error, "replayed_frame"):
        return str(error.replayed_frame)
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "tinygrad_bn" not in f.filename.replace("\\", "/").split("/")]
    # the innermost frame of the student's own files: not numpy's, not Python's own
    own = [f for f in frames if not _library_file(f.filename)]
    if not own:
        return ""
    frame = own[-1]
    where = "" if frame.filename == own[0].filename else f" of {os.path.basename(frame.filename)}"
    return (f" (line {frame.lineno}{where} in {frame.name}: "
            f"{frame.line.strip() if frame.line else ''})")


def _library_file(filename: str) -> bool:
    """Whether a traceback's file belongs to Python or an installed package."""
    import sysconfig
    if filename.startswith("<"):
        return True
    path = os.path.realpath(filename)
    roots = {os.path.realpath(p) for k, p in sysconfig.get_paths().items()
             if k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(path.startswith(root + os.sep) for root in roots) or \
        "site-packages" in path.split(os.sep)


def _call(function: Callable, label: str, *args: Any, tracer: LineTracer | None = None) -> Any:
    """function(*args), under the tracer if given. In the box the call is recorded; in the
    checker it is served from the box's recording (`replay.py`): no student code runs here."""
    from .replay import active
    through = active()
    if through is None:
        return _run(function, label, args, tracer)
    return through.call(function, label, args, tracer, lambda: _run(function, label, args, tracer))


def _run(function: Callable, label: str, args: tuple[Any, ...], tracer: LineTracer | None) -> Any:
    """function(*args); builtins the student's code replaces are put back afterwards."""
    import builtins
    namespace = vars(builtins)
    kept = dict(namespace)
    mark_running(label)
    try:
        return tracer.run(function, *args) if tracer is not None else function(*args)
    except Exception:
        raise
    except BaseException as error:  # sys.exit, KeyboardInterrupt, ...: the student's
        raise StudentExitError(exception_text(error)) from None
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


def call_forward(forward: Callable, label: str, kind: str, x: np.ndarray, gamma: np.ndarray,
                  beta: np.ndarray, param: dict, tracer: LineTracer | None = None) -> tuple[Any, Any]:
    args = (x, gamma, beta, GROUPS, param) if kind == "group" else (x, gamma, beta, param)
    result = _call(forward, label, *args, tracer=tracer)
    if result is None or not isinstance(result, (tuple, list)) or len(result) != 2 \
            or result[0] is None:
        raise StubError("returns no output yet (the assignment's stub)")
    return result[0], result[1]


def bn_param_for(kind: str, mode: str = "train", **extra: Any) -> dict:
    if kind in ("batch", "spatial"):
        return {"mode": mode, "eps": EPS, "momentum": MOMENTUM, **extra}
    return {"eps": EPS, **extra}


def seeded_bn_param(kind: str, start: dict[str, np.ndarray], layout: tuple[int, ...] | None,
            mode: str = "train") -> dict:
    """bn_param holding running statistics `start`, in the layout the student's own train
    step stores them in ((D,), (1, D), (1, C, 1, 1), ...), so that a layout the student
    chose comes back to their code as they would have it."""
    def shaped(value: np.ndarray) -> np.ndarray:
        value = value.copy()
        return value.reshape(layout) if layout is not None else value
    return bn_param_for(kind, mode, **{k: shaped(v) for k, v in start.items()})


def running_layout(forward: Callable, name: str, kind: str, spec: NormSpec, seed: int
                    ) -> tuple[tuple[int, ...] | None, int | None]:
    """(shape, size) of the running_mean the forward's first train step stores (given
    bn_param without running statistics, as the assignment's first call does); the shape
    only when it holds one value per feature; (None, None) when it stores none."""
    if kind not in ("batch", "spatial"):
        return None, None
    _, x, gamma, beta, _ = case_inputs(kind, seed)
    param = bn_param_for(kind)
    try:
        call_forward(forward, name, kind, x, gamma, beta, param)
    except Exception:  # noqa: BLE001 - judged by the calls that follow
        return None, None
    value = param.get("running_mean")
    if not isinstance(value, np.ndarray):
        return None, None
    return (tuple(value.shape) if value.size == spec.param_shape[0] else None), value.size


def running_start(kind: str, spec: NormSpec, seed: int) -> dict[str, np.ndarray]:
    if kind not in ("batch", "spatial"):
        return {}
    rng = np.random.default_rng(seed + 100)
    features = spec.param_shape[0]
    return {"running_mean": rng.standard_normal(features),
            "running_var": rng.uniform(0.5, 2.0, features)}


def staged_out(spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    nodes = staged_nodes(Node(x.astype(np.float64)), Node(gamma.astype(np.float64)),
                         Node(beta.astype(np.float64)), spec)
    return nodes["out"].data


def float_array(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        kind = value.type_name if hasattr(value, "type_name") else type(value).__name__
        raise CheckFailedError(f"{what} is not an array of numbers (got {kind})") from None
    return array


def student_file(function: Callable) -> str | None:
    code = getattr(function, "__code__", None)
    return None if code is None else code.co_filename


def saved_case(kind: str, spec: NormSpec, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
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


def arrays_in(value: Any, prefix: str = "cache") -> list[tuple[str, np.ndarray]]:
    """Every numpy array a cache holds (tuples, lists and dicts walked), with its place."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [item for i, v in enumerate(value.ravel())
                    for item in arrays_in(v, f"{prefix}[{i}]")]
        return [(prefix, value)]
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in arrays_in(v, f"{prefix}[{i}]")]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in arrays_in(v, f"{prefix}[{k!r}]")]
    return []


def call_backward(backward: Callable, name: str, dout: np.ndarray, cache: Any,
                   tracer: LineTracer | None = None) -> tuple[Any, Any, Any]:
    result = _call(backward, name, dout, cache, tracer=tracer)
    if result is None or not isinstance(result, (tuple, list)) or len(result) != 3 \
            or any(r is None for r in result):
        raise StubError("returns no gradients yet (the assignment's stub)")
    return tuple(result)  # type: ignore[return-value]


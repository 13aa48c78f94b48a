"""The student's calls recorded in the box and served back to the checker, so that every
verdict is computed in the checker's own process.

In the box (`recording`): the judging runs as usual, but each call of a student's function
(`assignment._call`) is recorded: the digest of the inputs it was given, what it returned
(arrays, numbers, strings, lists, tuples and dicts; anything else by its type name), what it
raised, its arguments as they were afterwards (in-place changes), and the line tracer's new
snapshots. The recording is all the box sends back; its verdict is thrown away.

In the checker (`replaying`): the same judging runs again on the checker's own inputs, with
stand-ins for the student's functions (`StudentFunction`); each call takes the next recorded
one, which must have been made with the same inputs. A forged recording can only claim what a
student's function returned for the checker's inputs - which the function could have returned
itself - and a recording that does not fit is a `ReplayError`, never a verdict.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .trace import LineTracer, Snapshot

__all__ = ["ReplayError", "Opaque", "StudentFunction", "recording", "replaying", "active",
           "encode", "decode", "describe_functions", "stand_ins", "Recorder", "Player",
           "judge_in_box"]

MAX_DEPTH = 12      # nesting of lists, tuples and dicts sent back
MAX_ITEMS = 10_000  # items of one list, tuple or dict
MAX_TEXT = 4000     # characters of one string


class ReplayError(Exception):
    """The box's recording does not fit the checker's calls (or is malformed)."""


@dataclass(frozen=True)
class Opaque:
    """A value the box cannot send (an object of the student's), by its type's name."""

    type_name: str


def encode(value: Any, arrays: list[np.ndarray], depth: int = 0) -> Any:
    """value as JSON-friendly data; numeric arrays appended to `arrays` and referenced."""
    if isinstance(value, Opaque):
        return {"o": value.type_name}
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return value[:MAX_TEXT]
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
            return {"o": "int"}
        return value
    if isinstance(value, float):  # np.float64 too: as the plain float JSON will carry
        return float(value) if math.isfinite(value) else {"f": repr(float(value))}
    if isinstance(value, (np.ndarray, np.generic)) or (
            hasattr(value, "__array__") and not isinstance(value, (list, tuple, dict))):
        try:
            array = np.asarray(value)
        except Exception:  # noqa: BLE001 - the student's object refuses
            return {"o": type(value).__name__}
        if array.dtype.kind not in "biuf" or array.dtype.byteorder not in "=|<" + (
                "" if np.little_endian else ">"):
            return {"o": type(value).__name__}
        arrays.append(np.array(array, order="C"))
        return {"s" if isinstance(value, np.generic) else "a": len(arrays) - 1}
    if depth >= MAX_DEPTH:
        return {"o": type(value).__name__}
    if isinstance(value, (list, tuple)):
        items = [encode(v, arrays, depth + 1) for v in list(value)[:MAX_ITEMS]]
        return {"t" if isinstance(value, tuple) else "l": items}
    if isinstance(value, dict):
        return {"d": [[str(k)[:MAX_TEXT], encode(v, arrays, depth + 1)]
                      for k, v in list(value.items())[:MAX_ITEMS]]}
    return {"o": type(value).__name__}


def decode(data: Any, arrays: list[np.ndarray], depth: int = 0) -> Any:
    """The value `encode` described (strictly: anything else is a ReplayError)."""
    if data is None or isinstance(data, (bool, int, str)):
        return data
    if isinstance(data, float):
        return data
    if depth > MAX_DEPTH + 1 or not isinstance(data, dict) or len(data) != 1:
        raise ReplayError("a value of an unknown form")
    (key, inner), = data.items()
    if key in ("a", "s"):
        if type(inner) is not int or not 0 <= inner < len(arrays):
            raise ReplayError("a reference to no array")
        array = arrays[inner]
        return array[()] if key == "s" and array.ndim == 0 else array.copy()
    if key == "f" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    if key == "o" and isinstance(inner, str):
        return Opaque(inner[:200])
    if key in ("l", "t") and isinstance(inner, list):
        items = [decode(v, arrays, depth + 1) for v in inner]
        return tuple(items) if key == "t" else items
    if key == "d" and isinstance(inner, list):
        result = {}
        for pair in inner:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str):
                raise ReplayError("a dict entry of an unknown form")
            result[pair[0]] = decode(pair[1], arrays, depth + 1)
        return result
    raise ReplayError("a value of an unknown form")


def _digest(args: tuple[Any, ...]) -> str:
    """Of the arguments a call was given: their structure, arrays by dtype, shape and bytes."""
    arrays: list[np.ndarray] = []
    structure = encode(list(args), arrays)
    digest = hashlib.sha256(repr(structure).encode())
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class StudentFunction:
    """The checker's stand-in for a student's function: its name, file and source, recorded
    in the box; calling it is served by the recording (`replaying`)."""

    def __init__(self, name: str, filename: str | None, source: str | None, first: int) -> None:
        self.__name__ = name
        self.filename = filename
        self.recorded_source = source
        self.first_line = first
        if filename is not None:
            self.__code__ = type("Code", (), {"co_filename": filename})()

    def __call__(self, *args: Any) -> Any:
        raise ReplayError(f"{self.__name__} called outside a replay")


def describe_functions(functions: dict[str, Callable]) -> dict[str, Any]:
    """In the box: what the checker needs to know of each function (name, file, source)."""
    import inspect
    described = {}
    for key, function in functions.items():
        code = getattr(function, "__code__", None)
        try:
            lines, first = inspect.getsourcelines(function)
            source: str | None = "".join(lines)[:200_000]
        except (OSError, TypeError):
            source, first = None, 0
        described[key] = {"name": str(getattr(function, "__name__", key))[:200],
                          "file": None if code is None else str(code.co_filename)[:4096],
                          "source": source, "first": int(first)}
    return described


def stand_ins(described: Any) -> dict[str, StudentFunction]:
    """The checker's stand-ins from what the box described (a ReplayError if malformed)."""
    if not isinstance(described, dict):
        raise ReplayError("the functions are not described")
    result = {}
    for key, info in described.items():
        if not isinstance(info, dict) or not isinstance(info.get("name"), str) or \
                not isinstance(info.get("file"), (str, type(None))) or \
                not isinstance(info.get("source"), (str, type(None))) or \
                type(info.get("first")) is not int:
            raise ReplayError(f"the description of {key!r} is malformed")
        result[key] = StudentFunction(info["name"], info["file"], info["source"], info["first"])
    return result


class _Replayed:
    replayed_text = ""
    replayed_frame = ""


class ReplayedError(_Replayed, Exception):
    """What a student's function raised in the box (its text as the box's checker wrote it)."""


class ReplayedNotImplementedError(_Replayed, NotImplementedError):
    """The student's function raised NotImplementedError in the box."""


def _raised(kind: str, text: str, frame: str) -> BaseException:
    from .assignment import StudentExitError
    if kind == "exit":
        return StudentExitError(text)
    error: _Replayed = ReplayedNotImplementedError(text) if kind == "notimpl" else ReplayedError(text)
    error.replayed_text, error.replayed_frame = text, frame
    return error  # type: ignore[return-value]


class Recorder:
    """In the box: each call of a student's function, recorded."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.arrays: list[np.ndarray] = []

    def call(self, function: Callable, label: str, args: tuple[Any, ...],
             tracer: LineTracer | None, run: Callable[[], Any]) -> Any:
        from .assignment import StudentExitError, exception_text, student_frame
        record: dict[str, Any] = {"label": label, "digest": _digest(args)}
        first = len(tracer.snapshots) if tracer is not None else 0
        try:
            result = run()
            record["result"] = encode(result, self.arrays)
            return result
        except BaseException as error:
            kind = ("exit" if isinstance(error, StudentExitError) else
                    "notimpl" if isinstance(error, NotImplementedError) else "error")
            text = str(error) if kind == "exit" else exception_text(error)
            record["raised"] = {"kind": kind, "text": text[:MAX_TEXT],
                                "frame": student_frame(error)[:MAX_TEXT]}
            raise
        finally:
            record["after"] = [encode(a, self.arrays) for a in args]
            if tracer is not None:
                record["tracer"] = {
                    "first": first, "truncated": bool(tracer.truncated),
                    "returned": {str(k): [int(i) for i in v] for k, v in tracer.returned.items()},
                    "snapshots": [[s.index, s.function, s.line, s.variable,
                                   encode(s.value, self.arrays), [int(d) for d in s.deps],
                                   bool(s.parameter)] for s in tracer.snapshots[first:]]}
            self.calls.append(record)


class Player:
    """In the checker: each call served by the next recorded one."""

    def __init__(self, calls: Any, arrays: list[np.ndarray]) -> None:
        if not isinstance(calls, list):
            raise ReplayError("the calls are not a list")
        self.calls = calls
        self.arrays = arrays
        self.next = 0
        self.failed: str | None = None  # the first misfit, even if the judging caught it

    def call(self, function: Callable, label: str, args: tuple[Any, ...],
             tracer: LineTracer | None, run: Callable[[], Any]) -> Any:
        try:
            return self._serve(label, args, tracer)
        except ReplayError as error:
            self.failed = self.failed or str(error)
            raise

    def _serve(self, label: str, args: tuple[Any, ...], tracer: LineTracer | None) -> Any:
        if self.next >= len(self.calls):
            raise ReplayError("the box made fewer calls than the checker (does the file patch "
                              "numpy, the checker or the interpreter?)")
        record = self.calls[self.next]
        self.next += 1
        if not isinstance(record, dict) or record.get("label") != label:
            raise ReplayError(f"the box's call {self.next} is not of {label}")
        if record.get("digest") != _digest(args):
            raise ReplayError(f"the box called {label} on other inputs than the checker's "
                              f"(does the file patch numpy, the checker or the interpreter?)")
        after = record.get("after")
        if not isinstance(after, list) or len(after) != len(args):
            raise ReplayError("the arguments after the call are missing")
        for target, state in zip(args, after):
            _restore(target, decode(state, self.arrays))
        if tracer is not None:
            self._trace(tracer, record.get("tracer"))
        raised = record.get("raised")
        if raised is not None:
            if not isinstance(raised, dict) or raised.get("kind") not in ("exit", "notimpl", "error") \
                    or not isinstance(raised.get("text"), str) \
                    or not isinstance(raised.get("frame"), str):
                raise ReplayError("what the call raised is malformed")
            raise _raised(raised["kind"], raised["text"][:MAX_TEXT], raised["frame"][:MAX_TEXT])
        if "result" not in record:
            raise ReplayError("the call has no result")
        return decode(record["result"], self.arrays)

    def _trace(self, tracer: LineTracer, data: Any) -> None:
        if not isinstance(data, dict) or data.get("first") != len(tracer.snapshots) or \
                not isinstance(data.get("snapshots"), list) or \
                not isinstance(data.get("returned"), dict):
            raise ReplayError("the trace is malformed")
        for item in data["snapshots"]:
            if not isinstance(item, list) or len(item) != 7:
                raise ReplayError("a trace snapshot is malformed")
            index, function, line, variable, value, deps, parameter = item
            value = decode(value, self.arrays)
            if index != len(tracer.snapshots) or not isinstance(function, str) or \
                    type(line) is not int or not isinstance(variable, str) or \
                    not isinstance(value, np.ndarray) or not isinstance(deps, list) or \
                    not all(type(d) is int and 0 <= d < index for d in deps):
                raise ReplayError("a trace snapshot is malformed")
            tracer.snapshots.append(Snapshot(index, function, line, variable, value, deps,
                                             bool(parameter)))
        returned: dict[str, list[int]] = {}
        for key, indices in data["returned"].items():
            if not isinstance(indices, list) or not all(
                    type(i) is int and 0 <= i < len(tracer.snapshots) for i in indices):
                raise ReplayError("the trace's returns are malformed")
            returned[key] = indices
        tracer.returned = returned
        tracer.truncated = bool(data.get("truncated"))


def _restore(target: Any, state: Any) -> None:
    """Put an argument in the state the box saw after the call (in-place changes)."""
    from .assignment import arrays_in
    if isinstance(target, dict) and isinstance(state, dict):
        target.clear()
        target.update(state)
        return
    held, given = arrays_in(target), arrays_in(state)
    if len(held) != len(given):
        return
    for (_, array), (_, value) in zip(held, given):
        if array.shape == value.shape and array.flags.writeable:
            np.copyto(array, value, casting="unsafe")


_ACTIVE: list[Recorder | Player] = []


def active() -> Recorder | Player | None:
    """The recorder (in the box) or player (in the checker) calls go through, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def recording() -> Iterator[Recorder]:
    recorder = Recorder()
    _ACTIVE.append(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.remove(recorder)


@contextmanager
def replaying(calls: Any, arrays: list[np.ndarray]) -> Iterator[Player]:
    player = Player(calls, arrays)
    _ACTIVE.append(player)
    try:
        yield player
    finally:
        _ACTIVE.remove(player)


def judge_in_box(loader: Callable[[], tuple[dict[str, Callable], Any, Any]],
                 judge: Callable[[dict[str, Callable]], Any], timeout: float,
                 memory: int | None) -> tuple[Any, Any, str | None]:
    """judge(functions) run twice: in a box on the student's functions (`loader()[0]`),
    recording their calls, then here on stand-ins served by that recording. Returns (what
    the judging here returned, the box's outcome, why no judging was possible or None)."""
    from .sandbox import run_isolated

    def work() -> dict[str, Any]:
        functions = loader()[0]
        described = describe_functions(functions)
        with recording() as recorder:
            try:
                judge(functions)
            except Exception:  # noqa: BLE001, S110 - the box's own verdict is never used
                pass
        return {"functions": described, "calls": recorder.calls, "arrays": recorder.arrays}

    outcome = run_isolated(work, timeout, memory)
    if outcome.failure is not None:
        return None, outcome, None
    try:
        data = outcome.value
        if not isinstance(data, dict) or set(data) != {"functions", "calls", "arrays"}:
            raise ReplayError("the reply is not a recording")
        arrays = data["arrays"]
        if not isinstance(arrays, list) or not all(isinstance(a, np.ndarray) for a in arrays):
            raise ReplayError("the recording's arrays are malformed")
        functions = stand_ins(data["functions"])
        with replaying(data["calls"], arrays) as player:
            value = judge(functions)
        if player.failed is not None:
            raise ReplayError(player.failed)
    except ReplayError as error:
        return None, outcome, str(error)
    return value, outcome, None

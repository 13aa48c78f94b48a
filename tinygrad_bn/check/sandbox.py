"""Run untrusted code (a student's file) in a child process that cannot harm the caller.

    outcome = run_isolated(work, timeout=60, memory=4 * 2**30)
    outcome.value      # what work() returned (JSON-friendly values and numpy arrays)
    outcome.failure    # why there is no value: "timeout", "raised", "exit", "signal", "reply"

The child is forked into a process group of its own, with an address-space limit; its
stdout and stderr go to a pipe the parent drains, keeping the head and the tail. The reply
comes back as JSON plus `.npy` files written with `allow_pickle=False`, so nothing the child
writes can run code in the caller. At the verdict the whole group is killed, so processes
the student's code started do not outlive it. The child may use `multiprocessing` itself.
"""

from __future__ import annotations

import builtins
import faulthandler
import json
import os
import pathlib
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ChildOutcome", "run_isolated", "OUTPUT_HEAD", "OUTPUT_TAIL", "mark_running"]

OUTPUT_HEAD = 1500  # characters of the student's output kept from its start
OUTPUT_TAIL = 500   # and from its end
REPLY_LIMIT = 64 * 2**20  # bytes of JSON the parent reads at most
_RUNNING_FILE: list[pathlib.Path] = []  # set in the child: where `mark_running` writes


@dataclass
class ChildOutcome:
    """What came back from the child. value: work()'s result when failure is None; failure:
    "timeout", "raised" (work raised: `error` is its text), "exit" (the process ended without
    a reply: `code`), "signal" (killed by `signal_name`), or "reply" (unreadable reply).
    running: the last name passed to `mark_running`; output: the child's stdout+stderr,
    truncated; output_size: its full size in bytes."""

    value: Any = None
    failure: str | None = None
    error: str = ""
    code: int | None = None
    signal_name: str = ""
    running: str = ""
    output: str = ""
    output_size: int = 0
    elapsed: float = 0.0


def mark_running(name: str) -> None:
    """In the child: record which function is running, so a timeout can name it."""
    if _RUNNING_FILE:
        try:
            _RUNNING_FILE[0].write_text(name)
        except OSError:
            pass


def run_isolated(work: Callable[[], Any], timeout: float, memory: int | None = None) -> ChildOutcome:
    """work() in a forked child with `timeout` seconds and `memory` bytes of address space
    beyond what the caller's process already maps (a notebook that imported torch maps
    gigabytes the student's code never touches)."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="tinygrad-bn-check-"))
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(work, folder, write_end, memory)
    try:  # also from this side, so the group exists before any kill
        os.setpgid(pid, pid)
    except OSError:
        pass
    os.close(write_end)
    outcome = ChildOutcome()
    try:
        status = _wait(pid, read_end, start + timeout, outcome)
        outcome.elapsed = time.monotonic() - start
        running = folder / "running"
        outcome.running = running.read_text() if running.is_file() else ""
        if status is None:
            outcome.failure = "timeout"
        else:
            _read_reply(folder, status, outcome)
    finally:
        _kill_group(pid)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(read_end)
        shutil.rmtree(folder, ignore_errors=True)
    return outcome


def _address_space() -> int:
    """Bytes of address space this process maps now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _child(work: Callable[[], Any], folder: pathlib.Path, output: int, memory: int | None) -> None:
    code = 0
    try:
        os.setpgid(0, 0)
        faulthandler.disable()  # a crash is the student's, reported by its signal
        if memory is not None:
            limit = _address_space() + memory
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        # sys.stdout may be a wrapper of the caller's (a test runner's capture): use fd 1, 2
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the child exits without cleanup
        _RUNNING_FILE[:] = [folder / "running"]
        namespace = vars(builtins)
        kept = dict(namespace)
        try:
            result: Any = {"ok": work()}
        except BaseException as error:  # noqa: BLE001 - everything is reported to the parent
            result = {"raised": _error_text(error)}
        # The student's code may have replaced builtins; the reply is written with the real ones.
        namespace.clear()
        namespace.update(kept)
        _write_reply(result, folder)
    except BaseException:  # noqa: BLE001
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


def _error_text(error: BaseException) -> str:
    try:
        return "".join(traceback.format_exception_only(type(error), error)).strip()
    except BaseException:  # noqa: BLE001
        return type(error).__name__


def _write_reply(result: Any, folder: pathlib.Path) -> None:
    arrays: list[np.ndarray] = []

    def encode(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                return {"__unsendable__": str(value.dtype)}
            arrays.append(value)
            return {"__array__": len(arrays) - 1}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return {"__unsendable__": type(value).__name__}

    text = json.dumps(encode(result))
    for index, array in enumerate(arrays):
        np.save(folder / f"{index}.npy", np.array(array, order="C"), allow_pickle=False)
    (folder / "reply.json.part").write_text(text)
    os.replace(folder / "reply.json.part", folder / "reply.json")


def _read_reply(folder: pathlib.Path, status: int, outcome: ChildOutcome) -> None:
    reply = folder / "reply.json"
    if os.WIFSIGNALED(status):
        outcome.failure = "signal"
        number = os.WTERMSIG(status)
        try:
            outcome.signal_name = signal.Signals(number).name
        except ValueError:
            outcome.signal_name = f"signal {number}"
        return
    if not reply.is_file():
        outcome.failure = "exit"
        outcome.code = os.WEXITSTATUS(status)
        return
    try:
        if reply.stat().st_size > REPLY_LIMIT:
            raise ValueError("too large")
        data = json.loads(reply.read_text())

        def decode(value: Any) -> Any:
            if isinstance(value, dict):
                if set(value) == {"__array__"}:
                    index = int(value["__array__"])
                    return np.load(folder / f"{index}.npy", allow_pickle=False)
                return {k: decode(v) for k, v in value.items()}
            if isinstance(value, list):
                return [decode(v) for v in value]
            return value

        data = decode(data)
        if not isinstance(data, dict) or not (set(data) == {"ok"} or set(data) == {"raised"}):
            raise ValueError("unexpected layout")
    except (OSError, ValueError, TypeError, KeyError) as error:
        outcome.failure = "reply"
        outcome.error = f"the child's reply cannot be read ({error})"
        return
    if "raised" in data:
        outcome.failure = "raised"
        outcome.error = str(data["raised"])
    else:
        outcome.value = data["ok"]


def _wait(pid: int, output: int, deadline: float, outcome: ChildOutcome) -> int | None:
    """Drain the child's output until it exits (its wait status) or the deadline (None)."""
    head, tail = bytearray(), bytearray()
    size = 0
    status = None
    open_ = True
    while True:
        if status is None:
            done, status_ = os.waitpid(pid, os.WNOHANG)
            if done:
                status = status_
        remaining = deadline - time.monotonic()
        if status is None and remaining <= 0:
            break
        if not open_:
            if status is not None:
                break
            time.sleep(min(0.02, max(remaining, 0)))
            continue
        ready, _, _ = select.select([output], [], [], 0 if status is not None else
                                    min(0.05, max(remaining, 0)))
        if not ready:
            if status is not None:
                break  # exited and nothing more to read (grandchildren may hold the pipe)
            continue
        chunk = os.read(output, 65536)
        if not chunk:
            open_ = False
            continue
        size += len(chunk)
        if len(head) < OUTPUT_HEAD * 4:
            head.extend(chunk[:OUTPUT_HEAD * 4 - len(head)])
        tail.extend(chunk)
        del tail[:-OUTPUT_TAIL * 4]
    outcome.output_size = size
    outcome.output = _truncated(head, tail, size)
    return status


def _truncated(head: bytearray, tail: bytearray, size: int) -> str:
    text = head.decode("utf-8", "replace")
    if size <= len(head) and len(text) <= OUTPUT_HEAD + OUTPUT_TAIL:
        return text
    end = tail.decode("utf-8", "replace")[-OUTPUT_TAIL:]
    return f"{text[:OUTPUT_HEAD]}\n[... {size:,} bytes in all; the middle is left out ...]\n{end}"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

"""Run untrusted code (a student's file) in a box: a child process that cannot harm the caller.

    outcome = run_isolated(work, timeout=60, memory=4 * 2**30)
    outcome.value      # what work() returned (JSON-friendly values and numpy arrays)
    outcome.failure    # why there is no value: "timeout", "memory", "raised", "exit", "signal",
                       # "reply"
    outcome.walls      # the walls that held (see `walls.WALLS`)

The caller forks a warden, which forks the box. The warden is a subreaper (a process the
box's code orphans stays in its tree) and, where the platform allows, puts the box in new PID,
mount, network, IPC and UTS namespaces (`walls.py`): the box is the first process of its PID
namespace, sees a fresh /proc, a read-only filesystem but its own folder, no network, and has
no capabilities. The box's environment is scrubbed, its working folder, HOME and TMPDIR are a
fresh folder, no descriptor of the caller's stays open, stdout and stderr go to a pipe the
caller drains (keeping the head and the tail).

The caller keeps the time on its own clock and never waits on a child: it polls the pipes
and the process tree (whose memory it adds up) until the reply, the deadline or the budget,
then kills every process of the tree, whatever group or session it joined, and removes the
folder - also when interrupted.

The reply is the one stream of frames on descriptor 3: "R" (which function runs) and "V"
(the value: JSON plus `.npy` arrays of numbers, read with their headers checked, never with
pickle). The box runs the student's code in the same process, so the reply is only ever
data: whatever the caller concludes from it, it computes itself (`replay.py`).
"""

from __future__ import annotations

import ctypes
import faulthandler
import io
import json
import os
import pathlib
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .walls import build_walls, drop_privileges, enter_namespaces, process_walls

__all__ = ["ChildOutcome", "run_isolated", "OUTPUT_HEAD", "OUTPUT_TAIL", "mark_running",
           "parse_value", "REPLY_LIMIT"]

OUTPUT_HEAD = 1500  # characters of the student's output kept from its start
OUTPUT_TAIL = 500   # and from its end
REPLY_LIMIT = 256 * 2**20  # bytes of reply the caller reads at most
MAX_ARRAYS = 200_000
MAX_DEPTH = 64      # nesting of the reply's JSON
REPLY_FD = 3
POLL = 0.05         # seconds between looks at the pipes and the warden
MEMORY_POLL = 0.1   # seconds between walks of the process tree adding up its memory
_FRAME = struct.Struct(">cI")
_PR_SET_CHILD_SUBREAPER = 36


@dataclass
class ChildOutcome:
    """What came back from the box. value: work()'s result when failure is None; failure:
    "timeout", "memory" (the tree outgrew the budget), "raised" (work raised: `error` is its
    text), "exit" (the process ended without a reply: `code`), "signal" (killed by
    `signal_name`), or "reply" (unreadable reply: `error` says why). running: the last name
    passed to `mark_running`; output: the box's stdout+stderr, truncated; output_size: its
    full size in bytes; walls: the walls that held; peak_memory: the tree's largest private
    memory seen, bytes."""

    value: Any = None
    failure: str | None = None
    error: str = ""
    code: int | None = None
    signal_name: str = ""
    running: str = ""
    output: str = ""
    output_size: int = 0
    elapsed: float = 0.0
    walls: list[str] = field(default_factory=list)
    peak_memory: int = 0


def mark_running(name: str) -> None:
    """In the box: record which function is running, so a timeout can name it."""
    if _IN_BOX:
        _send(b"R", name[:200].encode("utf-8", "replace"))


_IN_BOX: list[bool] = []


def _send(tag: bytes, payload: bytes) -> None:
    data = _FRAME.pack(tag, len(payload)) + payload
    view = memoryview(data)
    while view:
        try:
            written = os.write(REPLY_FD, view)
        except InterruptedError:
            continue
        except OSError:
            return
        view = view[written:]


def run_isolated(work: Callable[[], Any], timeout: float, memory: int | None = None) -> ChildOutcome:
    """work() in a box with `timeout` seconds on the caller's clock, and a budget of `memory`
    bytes: of address space per process beyond what the caller's process already maps (a
    notebook that imported torch maps gigabytes the student's code never touches), and of
    private memory over the box's whole process tree."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="tinygrad-bn-box-"))
    outcome = ChildOutcome()
    pipes: list[int] = []
    pid = 0
    start = time.monotonic()
    try:
        (home := folder / "home").mkdir()
        (folder / "tmp").mkdir()
        output_read, output_write = os.pipe()
        reply_read, reply_write = os.pipe()
        warden_read, warden_write = os.pipe()
        pipes += [output_read, output_write, reply_read, reply_write, warden_read, warden_write]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the warden: never returns
            _warden(work, folder, home, output_write, reply_write, warden_write,
                    (output_read, reply_read, warden_read), memory)
        for end in (output_write, reply_write, warden_write):
            os.close(end)
            pipes.remove(end)
        reply = _watch(pid, output_read, reply_read, warden_read, start + timeout, memory,
                       outcome)
        outcome.elapsed = time.monotonic() - start
        if outcome.failure is None:
            _read_reply(reply, outcome)
    finally:
        if pid:
            _end_tree(pid)
        for end in pipes:
            try:
                os.close(end)
            except OSError:
                pass
        shutil.rmtree(folder, ignore_errors=True)
    return outcome


# --- in the warden and the box -----------------------------------------------------------
def _warden(work: Callable[[], Any], folder: pathlib.Path, home: pathlib.Path, output: int,
            reply: int, told: int, caller_ends: tuple[int, ...], memory: int | None) -> None:
    """Outside the box: a subreaper that enters the namespaces and starts the box's first
    process; it reaps whatever is orphaned until the caller ends it."""
    code = 0
    try:
        for end in caller_ends:
            os.close(end)
        _close_all_but(output, reply, told)  # the caller's stdin, stdout, files: out of reach
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides; it kills the tree
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # the caller's death ends the warden
        entered = enter_namespaces()
        first = os.fork()
        if first == 0:
            _first(work, folder, home, output, reply, told, entered, memory)
        os.close(output)
        os.close(reply)
        os.close(told)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                signal.pause()
    except BaseException:  # noqa: BLE001
        code = 70
    finally:
        os._exit(code)


def _close_all_but(*kept: int) -> None:
    """Descriptors 0, 1, 2 on /dev/null; every other but `kept` closed."""
    null = os.open(os.devnull, os.O_RDWR)
    for number in (0, 1, 2):
        if number not in kept and number != null:
            os.dup2(null, number)
    if null > 2 and null not in kept:
        os.close(null)
    low = 3
    for number in sorted(k for k in kept if k >= 3):
        os.closerange(low, number)
        low = number + 1
    os.closerange(low, _max_descriptor())


def _tell(end: int, message: dict[str, Any]) -> None:
    os.write(end, (json.dumps(message) + "\n").encode())


def _first(work: Callable[[], Any], folder: pathlib.Path, home: pathlib.Path, output: int,
           reply: int, told: int, entered: list[str], memory: int | None) -> None:
    """The box's first process (PID 1 of its namespace where there is one): it raises the
    mount walls, starts the student's process, tells the caller how it ended, and ends, so
    that the namespace ends with everything in it."""
    code = 0
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # dies with the warden
        walls = build_walls(folder, entered)
        _tell(told, {"walls": walls})
        student = os.fork()
        if student == 0:
            os.close(told)
            _student(work, folder, home, output, reply, memory)
        os.close(output)
        os.close(reply)
        while True:
            done, status = os.waitpid(-1, 0)
            if done == student:
                _tell(told, {"status": status})
                break
    except BaseException:  # noqa: BLE001
        code = 70
    finally:
        os._exit(code)


def _student(work: Callable[[], Any], folder: pathlib.Path, home: pathlib.Path, output: int,
             reply: int, memory: int | None) -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        faulthandler.disable()  # a crash is the student's, reported by its signal
        walls = ["no privileges"] if drop_privileges() else []
        try:
            os.setsid()  # no controlling terminal to write to
        except OSError:
            pass
        os.dup2(output, 1)  # the caller's 1 and 2 are open, so output is neither
        os.dup2(output, 2)
        os.dup2(reply, REPLY_FD)
        null = os.open(os.devnull, os.O_RDONLY)
        if null != 0:
            os.dup2(null, 0)
        os.closerange(REPLY_FD + 1, _max_descriptor())  # none of the caller's files
        _scrub_environment(folder, home)
        os.chdir(home)
        tempfile.tempdir = str(folder / "tmp")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if memory is not None:
            limit = _address_space() + memory
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # sys.stdout may be a wrapper of the caller's (a test runner's capture): use fd 1, 2
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the box exits without cleanup
        _IN_BOX[:] = [True]
        _send(b"W", json.dumps(walls).encode())
        try:
            result: Any = {"ok": work()}
        except BaseException as error:  # noqa: BLE001 - everything is reported to the caller
            result = {"raised": _error_text(error)}
        _send(b"V", _encode_value(result))
    except BaseException:  # noqa: BLE001
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


def _max_descriptor() -> int:
    try:
        return min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 20)
    except (OSError, ValueError):
        return 4096


KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")


def _scrub_environment(folder: pathlib.Path, home: pathlib.Path) -> None:
    """Only a few harmless variables stay; the process's own copy of the caller's environment
    (what /proc/self/environ shows) is blanked too."""
    kept = {k: os.environ[k] for k in KEPT_VARIABLES if k in os.environ}
    os.environ.clear()
    os.environ.update(kept, HOME=str(home), TMPDIR=str(folder / "tmp"), USER="student",
                      PYTHONDONTWRITEBYTECODE="1")
    try:
        fields = pathlib.Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
        if 0 < start < end and end - start < 1 << 24:
            ctypes.memset(start, 0, end - start)
    except (OSError, ValueError, IndexError):
        pass


def _address_space() -> int:
    """Bytes of address space this process maps now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _error_text(error: BaseException) -> str:
    try:
        return "".join(traceback.format_exception_only(type(error), error)).strip()
    except BaseException:  # noqa: BLE001
        return type(error).__name__


def _encode_value(result: Any) -> bytes:
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

    text = json.dumps(encode(result)).encode()
    parts = [struct.pack(">Q", len(text)), text]
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.array(array, order="C"), allow_pickle=False)
        parts += [struct.pack(">Q", buffer.tell()), buffer.getvalue()]
    return b"".join(parts)


# --- in the caller ---------------------------------------------------------------------
def _watch(pid: int, output: int, reply: int, warden: int, deadline: float,
           memory: int | None, outcome: ChildOutcome) -> bytes:
    """Drain the pipes until the box ends, the deadline or the memory budget; the reply's
    frames. Sets outcome's failure for a timeout, memory or an ended box."""
    head, tail = bytearray(), bytearray()
    replied, told = bytearray(), bytearray()
    size = 0
    status: int | None = None
    open_ends = {output, reply, warden}
    next_poll = 0.0
    while True:
        now = time.monotonic()
        if status is not None or now >= deadline:
            break
        if memory is not None and now >= next_poll:
            next_poll = now + MEMORY_POLL
            used = _tree_memory(pid)
            outcome.peak_memory = max(outcome.peak_memory, used)
            if used > memory:
                outcome.failure = "memory"
                break
        done, warden_status = os.waitpid(pid, os.WNOHANG)
        if done:  # the warden itself ended: the box has no one to report it
            open_ends.discard(warden)
            status = status if status is not None else -1
        if not open_ends:
            time.sleep(min(POLL, max(deadline - now, 0)))
            continue
        ready, _, _ = select.select(list(open_ends), [], [], min(POLL, max(deadline - now, 0)))
        for end in ready:
            chunk = os.read(end, 65536)
            if not chunk:
                open_ends.discard(end)
            elif end == output:
                size += _kept_output(chunk, head, tail)
            elif end == reply:
                if len(replied) + len(chunk) > REPLY_LIMIT:
                    outcome.failure, outcome.error = "reply", "the reply is too large"
                    open_ends.discard(end)
                    status = -1
                else:
                    replied.extend(chunk)
            else:
                told.extend(chunk[:4096])
                status = _status_told(told, outcome)
    if status is not None and outcome.failure is None:
        size += _drain(output, reply, open_ends, replied, head, tail)  # what the box wrote last
    outcome.output_size = size
    outcome.output = _truncated(head, tail, size)
    if outcome.failure is None and status is None:
        outcome.failure = "timeout"
        outcome.running = _running(bytes(replied))  # a forward its backward called, say
    elif outcome.failure is None:
        outcome.running = _running(bytes(replied))
        _status_failure(status, replied, outcome)
    else:
        outcome.running = _running(bytes(replied))
    return bytes(replied)


def _drain(output: int, reply: int, open_ends: set[int], replied: bytearray,
           head: bytearray, tail: bytearray) -> int:
    """Read what is left in the pipes (not waiting); the bytes of output read."""
    size = 0
    for _ in range(1000):
        ready, _, _ = select.select([e for e in (output, reply) if e in open_ends], [], [], 0)
        if not ready:
            break
        for end in ready:
            chunk = os.read(end, 65536)
            if not chunk:
                open_ends.discard(end)
            elif end == reply and len(replied) + len(chunk) <= REPLY_LIMIT:
                replied.extend(chunk)
            elif end == output:
                size += _kept_output(chunk, head, tail)
    return size


def _kept_output(chunk: bytes, head: bytearray, tail: bytearray) -> int:
    """What the box printed, kept as its first and last bytes only; the bytes read."""
    if len(head) < OUTPUT_HEAD * 4:
        head.extend(chunk[:OUTPUT_HEAD * 4 - len(head)])
    tail.extend(chunk)
    del tail[:-OUTPUT_TAIL * 4]
    return len(chunk)


def _status_told(told: bytearray, outcome: ChildOutcome) -> int | None:
    """The box's wait status once the warden told it (its first lines: walls, status)."""
    for line in bytes(told).split(b"\n")[:-1]:
        try:
            message = json.loads(line)
        except ValueError:
            return -1
        if isinstance(message, dict) and isinstance(message.get("walls"), list):
            outcome.walls = [w for w in message["walls"] if isinstance(w, str)]
        if isinstance(message, dict) and type(message.get("status")) is int:
            return message["status"]
    return None


def _status_failure(status: int, replied: bytearray, outcome: ChildOutcome) -> None:
    if status >= 0 and os.WIFSIGNALED(status):
        outcome.failure = "signal"
        number = os.WTERMSIG(status)
        try:
            outcome.signal_name = signal.Signals(number).name
        except ValueError:
            outcome.signal_name = f"signal {number}"
    elif not _frames(bytes(replied), b"V"):
        outcome.failure = "exit"
        outcome.code = os.WEXITSTATUS(status) if status >= 0 else None


def _frames(data: bytes, tag: bytes) -> list[bytes]:
    """The payloads of the frames with `tag` (a stream cut short ends the list)."""
    found, at = [], 0
    while at + _FRAME.size <= len(data):
        kind, length = _FRAME.unpack_from(data, at)
        at += _FRAME.size
        if at + length > len(data):
            break
        if kind == tag:
            found.append(data[at:at + length])
        at += length
    return found


def _running(data: bytes) -> str:
    marks = _frames(data, b"R")
    return marks[-1].decode("utf-8", "replace")[:200] if marks else ""


def _read_reply(data: bytes, outcome: ChildOutcome) -> None:
    values = _frames(data, b"V")
    walls = _frames(data, b"W")
    try:
        told = json.loads(walls[0]) if walls else []
        told = [w for w in told if w == "no privileges"] if isinstance(told, list) else []
    except (ValueError, RecursionError, TypeError):
        told = []
    outcome.walls = process_walls(outcome.walls + told)
    try:
        value = parse_value(values[-1])
        if not isinstance(value, dict) or not (set(value) == {"ok"} or set(value) == {"raised"}):
            raise ValueError("unexpected layout")
        if "raised" in value and not isinstance(value["raised"], str):
            raise ValueError("unexpected layout")
    except Exception as error:  # noqa: BLE001 - anything the box sent is only data
        outcome.failure = "reply"
        outcome.error = f"the box's reply cannot be read ({type(error).__name__}: {error})"[:300]
        return
    if "raised" in value:
        outcome.failure = "raised"
        outcome.error = value["raised"]
    else:
        outcome.value = value["ok"]


def parse_value(data: bytes) -> Any:
    """A "V" frame's value: JSON (bounded nesting) whose {"__array__": i} are the arrays that
    follow, each an `.npy` of numbers whose header must describe exactly its bytes."""
    (length,) = struct.unpack_from(">Q", data, 0)
    at = 8 + length
    if at > len(data):
        raise ValueError("the JSON is cut short")
    text = data[8:at]
    _check_depth(text)
    tree = json.loads(text)
    arrays = []
    while at < len(data):
        if len(arrays) >= MAX_ARRAYS or at + 8 > len(data):
            raise ValueError("too many arrays or a cut-short one")
        (size,) = struct.unpack_from(">Q", data, at)
        if at + 8 + size > len(data):
            raise ValueError("an array is cut short")
        arrays.append(load_npy(data[at + 8:at + 8 + size]))
        at += 8 + size

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                index = value["__array__"]
                if type(index) is not int or not 0 <= index < len(arrays):
                    raise ValueError("a reference to no array")
                return arrays[index]
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(tree)


def _check_depth(text: bytes) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH before parsing it (strings skipped)."""
    depth, inside, escaped = 0, False, False
    for byte in text:
        if inside:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                inside = False
        elif byte == 0x22:
            inside = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"the JSON is nested deeper than {MAX_DEPTH}")
        elif byte in (0x5D, 0x7D):
            depth -= 1


def load_npy(blob: bytes) -> np.ndarray:
    """An `.npy` of numbers (bool, integer or float), its header checked against its size."""
    handle = io.BytesIO(blob)
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"an .npy of version {version}")
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise ValueError(f"an array of {dtype}")
    if len(shape) > 32 or any(type(n) is not int or n < 0 for n in shape):
        raise ValueError(f"an array of shape {shape}")
    count = 1
    for n in shape:
        count *= n
    offset = handle.tell()
    if count * dtype.itemsize != len(blob) - offset:
        raise ValueError(f"an array whose header claims {count * dtype.itemsize} bytes but "
                         f"holds {len(blob) - offset}")
    array = np.frombuffer(blob, dtype, count, offset)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def _truncated(head: bytearray, tail: bytearray, size: int) -> str:
    text = head.decode("utf-8", "replace")
    if size <= len(head) and len(text) <= OUTPUT_HEAD + OUTPUT_TAIL:
        return text
    end = tail.decode("utf-8", "replace")[-OUTPUT_TAIL:]
    return f"{text[:OUTPUT_HEAD]}\n[... {size:,} bytes in all; the middle is left out ...]\n{end}"


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc (empty where there is none)."""
    tree: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return tree
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
            tree.setdefault(int(fields[1]), []).append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return tree


def _descendants(pid: int) -> list[int]:
    tree = _children()
    found, queue = [], [pid]
    while queue:
        for child in tree.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _tree_memory(pid: int) -> int:
    """Private memory (bytes) of the warden's descendants: what the box's processes added."""
    total = 0
    for child in _descendants(pid):
        try:
            with open(f"/proc/{child}/smaps_rollup", "rb") as rollup:
                for line in rollup:
                    if line.startswith((b"Private_Clean:", b"Private_Dirty:", b"SwapPss:")):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def _end_tree(pid: int) -> None:
    """Kill every process below the warden (the first of a PID namespace takes the rest
    with it), then the warden, and reap it without ever blocking for long."""
    for _ in range(100):
        found = _descendants(pid)
        if not found:
            break
        for child in found:
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.002)
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.005)

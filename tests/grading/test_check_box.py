"""Hostile students against the checker's box: wrong math never passes whatever the file
patches or forges, a malformed reply is an ERROR, nothing the code starts outlives the
verdict, the timeout and the memory budget hold for the whole tree, the caller's secrets,
folders, terminal and processes stay out of reach (where the walls hold here; the walls that
are missing are said so), and the student's text is printed as data."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

import tinygrad_bn as tb
from tinygrad_bn.grading.walls import probe_walls

STUDENTS = pathlib.Path(__file__).resolve().parents[1] / "students"
COMPLETE = (STUDENTS / "complete.py").read_text()
EXE = pathlib.Path(sys.executable).with_name("tinygrad-bn")
LAYERNORM = ["layernorm_forward", "layernorm_backward"]
FORWARD_HEAD = "def layernorm_forward(x, gamma, beta, ln_param):\n"
# Wrong math: the forward returns x itself, the backward dout for dx.
WRONG = COMPLETE.replace("    return out, (xhat, gamma, ivar)\n",
                         "    return x, (xhat, gamma, ivar)\n").replace(
    "    return dx, dgamma, dbeta\n\n\ndef spatial_batchnorm_forward",
    "    return dout, dgamma, dbeta\n\n\ndef spatial_batchnorm_forward")
WALLS = probe_walls()


@pytest.fixture(params=["namespaces", "no namespaces"])
def box(request, monkeypatch):
    """The box as this machine makes it, and as a machine without namespaces makes it (the
    walls that need none still hold there)."""
    if request.param == "no namespaces":
        monkeypatch.setattr("tinygrad_bn.grading.sandbox.enter_namespaces", lambda: [])
    elif "pid namespace" not in WALLS:
        pytest.skip("no namespaces on this machine")
    return request.param


def write(folder: pathlib.Path, text: str) -> pathlib.Path:
    (folder / "cs231n").mkdir(parents=True, exist_ok=True)
    path = folder / "cs231n" / "layers.py"
    path.write_text(text)
    return path


def in_forward(code: str, text: str = COMPLETE) -> str:
    """`text` with `code` run first in layernorm_forward."""
    body = "".join("    " + line + "\n" for line in code.splitlines())
    return text.replace(FORWARD_HEAD, FORWARD_HEAD + body)


def processes_with(token: str) -> list[int]:
    """Living processes whose command line holds `token`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if token.encode() in pathlib.Path(f"/proc/{name}/cmdline").read_bytes():
                state = pathlib.Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(name))
        except OSError:
            continue
    return found


def none_left(token: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds  # SIGKILL is delivered asynchronously
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not processes_with(token)


PATCHES = {
    "numpy's max": "import numpy as np\nnp.max = lambda *a, **k: 0.0\n",
    "builtins.float": "import builtins\nbuiltins.float = lambda *a: 0.0\n",
    "builtins.max": "import builtins\nbuiltins.max = lambda *a, **k: 0.0\n",
    "numpy's allclose and abs": ("import numpy as np\nnp.allclose = lambda *a, **k: True\n"
                                 "np.abs = lambda a, *r, **k: a * 0\n"),
}


@pytest.mark.parametrize("name", sorted(PATCHES))
def test_wrong_math_never_passes_whatever_the_file_patches(name, tmp_path, box):
    report = tb.check_layers(write(tmp_path, PATCHES[name] + WRONG), timeout=20, only=LAYERNORM)
    assert not report.ok, str(report)
    assert all(r.status != "pass" for r in report.results.values()), str(report)


# The student writes a reply of its own (where the box's reply goes: the reply file of a
# checker that used one, else the reply descriptor) and ends the process at once.
FORGE = '''import json, os, struct, sys
try:
    import tinygrad_bn.grading.sandbox as box
except ImportError:
    import tinygrad_bn.check.sandbox as box
def forge(text, arrays=()):
    kept = getattr(box, "_RUNNING_FILE", None)
    if kept:
        folder = kept[0].parent
        for index, blob in enumerate(arrays):
            (folder / f"{index}.npy").write_bytes(blob)
        (folder / "reply.json").write_bytes(text)
    else:
        data = struct.pack(">Q", len(text)) + text + b"".join(
            struct.pack(">Q", len(b)) + b for b in arrays)
        os.write(3, struct.pack(">cI", b"V", len(data)) + data)
    sys.stdout.flush()
    os._exit(0)
'''
HUGE_HEADER = ("{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }"
               .ljust(117) + "\n")
HUGE_NPY = b"\x93NUMPY\x01\x00" + len(HUGE_HEADER).to_bytes(2, "little") + HUGE_HEADER.encode()
VERDICT = ('{"ok": {"name": "layernorm_forward", "status": "pass", "diagnosis": "forged", '
           '"parts": {}}}')
FORGERIES = {
    "a passing verdict": f"forge({VERDICT!r}.encode())",
    "ok is a number": "forge(b'{\"ok\": 5}')",
    "JSON nested 100,000 deep": "forge(b'[' * 100000 + b']' * 100000)",
    "an .npy header claiming 8 TiB": (f"forge(b'{{\"ok\": {{\"__array__\": 0}}}}', "
                                      f"[{HUGE_NPY!r}])"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_forged_or_malformed_reply_is_an_error_never_a_verdict(name, tmp_path, box):
    text = in_forward(FORGERIES[name], FORGE + WRONG)
    report = tb.check_layers(write(tmp_path, text), timeout=20, only=["layernorm_forward"])
    result = report.results["layernorm_forward"]
    assert result.status == "error", str(report)
    assert "forged" not in result.diagnosis


def test_the_timeout_holds_when_the_box_leaves_its_process_group(tmp_path):
    code = ("import os, time\ntry:\n    os.setpgid(0, os.getpgid(os.getppid()))\n"
            "except OSError:\n    pass\ntime.sleep(120)\n")
    path = write(tmp_path, in_forward(code))
    script = (f"import tinygrad_bn as tb\nr = tb.check_layers({str(path)!r}, timeout=2, "
              f"only=['layernorm_forward'])\nprint(r.results['layernorm_forward'].diagnosis)")
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=45)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the old checker left its box behind
        except ProcessLookupError:
            pass
    assert "timed out after 2 s" in out
    assert time.monotonic() - start < 40


LEAVERS = {
    "a forked child": "if os.fork() == 0:\n    os.execv('/bin/sleep', ['sleep', TOKEN])\n",
    "a new session": ("if os.fork() == 0:\n    os.setsid()\n"
                      "    os.execv('/bin/sleep', ['sleep', TOKEN])\n"),
    "a daemon (double fork, new session)": (
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execv('/bin/sleep', ['sleep', TOKEN])\n    os._exit(0)\n"),
}


@pytest.mark.parametrize("name", sorted(LEAVERS))
def test_nothing_the_code_starts_outlives_the_verdict(name, tmp_path, box):
    token = f"{time.time_ns() % 10**6 + 1000}.{uuid.uuid4().int % 10**6}"  # a sleep's seconds
    code = f"import os, time\nTOKEN = {token!r}\n" + LEAVERS[name] + "time.sleep(0.3)\n"
    report = tb.check_layers(write(tmp_path, in_forward(code)), timeout=20,
                             only=["layernorm_forward"])
    assert report.results["layernorm_forward"].status == "pass", str(report)
    assert none_left(token)


def test_the_memory_budget_covers_the_whole_process_tree(tmp_path, box):
    # four children of 96 MiB each: each under a 0.25 GiB budget, together over it
    code = ("import os, time\nimport numpy\nkids = []\nfor _ in range(4):\n"
            "    pid = os.fork()\n    if pid == 0:\n        block = numpy.ones(12 * 2**20)\n"
            "        time.sleep(3)\n        os._exit(0)\n    kids.append(pid)\n"
            "for pid in kids:\n    os.waitpid(pid, 0)\n")
    report = tb.check_layers(write(tmp_path, in_forward(code)), timeout=30, memory=2**28,
                             only=["layernorm_forward"])
    result = report.results["layernorm_forward"]
    assert result.status == "error" and "memory budget" in result.diagnosis, str(report)


def _attack(caller: pathlib.Path, token: str) -> str:
    """A student reaching for the caller's secrets, folders, terminal and processes (through
    its parent's /proc entries where the walls say they are out of reach)."""
    parent_environ = "[f'/proc/{os.getppid()}/environ']" if "environment" in WALLS else "[]"
    parent_output = ("[f'/proc/{os.getppid()}/fd/1', f'/proc/{os.getppid()}/fd/2']"
                     if "descriptors" in WALLS else "[]")
    lines = [
        "import os, pathlib, signal",
        "found = []",
        "found.append(os.environ.get('TB_SECRET', ''))",
        f"for where in ['/proc/self/environ'] + {parent_environ}:",
        "    try:",
        "        found.append(open(where, 'rb').read().decode('latin-1'))",
        "    except OSError:",
        "        pass",
        "print('LEAK' if any('s3cr3t' in f for f in found) else 'nothing found')",
        "for fd in range(4, 256):",  # descriptors the caller left open
        "    try:",
        "        os.write(fd, b'FOR' + b'GED on a descriptor')",
        "    except OSError:",
        "        pass",
        f"for tty in ['/dev/tty'] + {parent_output}:",
        "    try:",
        "        with open(tty, 'w') as handle:",
        "            handle.write('FOR' + 'GED to the terminal')",
        "    except OSError:",
        "        pass",
    ]
    if "read-only filesystem" in WALLS:
        lines += [
            f"for where in [{str(caller / 'cwd')!r}, {str(caller / 'home')!r}, "
            f"str(pathlib.Path.home()), os.getcwd()]:",
            "    try:",
            "        (pathlib.Path(where) / 'pwned').write_text('x')",
            "    except OSError:",
            "        pass",
        ]
    if "pid namespace" in WALLS:
        lines += [  # the checker's processes: their command line names this file's folder
            "for name in os.listdir('/proc'):",
            "    try:",
            f"        if name.isdigit() and int(name) != os.getpid() and {token!r}.encode() in "
            "open(f'/proc/{name}/cmdline', 'rb').read():",
            "            for fd in (1, 2):",
            "                try:",
            "                    with open(f'/proc/{name}/fd/{fd}', 'w') as handle:",
            "                        handle.write('FOR' + 'GED through /proc')",
            "                except OSError:",
            "                    pass",
            "            os.kill(int(name), signal.SIGKILL)",
            "    except OSError:",
            "        pass",
        ]
    return "\n".join(lines) + "\n"


def test_the_callers_secrets_folders_terminal_and_processes_are_out_of_reach(tmp_path):
    token = f"caller-{uuid.uuid4().hex[:12]}"
    caller = tmp_path / token
    (caller / "cwd").mkdir(parents=True)
    (caller / "home").mkdir()
    path = write(caller, in_forward(_attack(caller, token)))
    read_end, write_end = os.pipe()  # a descriptor the caller holds open
    env = {**os.environ, "TB_SECRET": "s3cr3t", "HOME": str(caller / "home")}
    try:
        result = subprocess.run([str(EXE), "check", str(path), "--only", "layernorm_forward",
                                 "--timeout", "20"], cwd=caller / "cwd", env=env,
                                capture_output=True, text=True, timeout=120,
                                pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        os.set_blocking(read_end, False)
        try:
            leaked = os.read(read_end, 1000)
        except BlockingIOError:
            leaked = b""
    finally:
        os.close(read_end)
    assert result.returncode == 0, result
    assert "nothing found" in result.stdout and "LEAK" not in result.stdout, result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr
    assert "FORGED" not in result.stdout + result.stderr and leaked == b""
    assert list((caller / "cwd").iterdir()) == [] and list((caller / "home").iterdir()) == []
    assert "1 of 1 functions pass" in result.stdout


def test_walls_that_are_missing_are_said_so():
    result = subprocess.run([str(EXE), "check", "--isolation"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for name in ("process tree", "clock", "memory"):
        assert f"holds    {name}:" in result.stdout
    for name in ("environment", "descriptors", "pid namespace", "read-only filesystem",
                 "no network", "no privileges"):
        word = "holds  " if name in WALLS else "MISSING"
        assert f"{word}  {name}:" in result.stdout
    assert "MISSING  fresh interpreter" in result.stdout
    assert "what the missing walls need:\n  fresh interpreter: a design" in result.stdout


def test_the_students_text_is_printed_as_data(tmp_path):
    row = "\\r\\x1b[2Klayernorm_forward   PASS            matches the staged graph"
    code = (f"print('\\x1b[31mred\\r' + {row!r})\n"
            f"raise ValueError({row!r} + '\\n2 of 2 functions pass \\ud800 \\u202e')\n")
    path = write(tmp_path, in_forward(code))
    result = subprocess.run([str(EXE), "check", str(path), "--only", ",".join(LAYERNORM),
                             "--timeout", "20"], capture_output=True, timeout=120)
    out = result.stdout.decode("utf-8")
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    # (errors only: no case to save, so no advice to save one)
    assert [line for line in out.splitlines() if re.match(r"\d+ of \d+ functions", line)] == [
        "0 of 2 functions pass (2 error)"]
    assert "\\x1b[2K" in out and "\\ud800" in out and "\\u202e" in out
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("layernorm_")] == [
        ["layernorm_forward", "ERROR"], ["layernorm_backward", "ERROR"]]


@pytest.mark.parametrize("which", ["SIGTERM", "SIGINT"])
def test_a_signal_ends_every_student_process_and_temporary_folder(which, tmp_path):
    token = f"{time.time_ns() % 10**6 + 2000}.{uuid.uuid4().int % 10**6}"
    code = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n"
            f"    os.execv('/bin/sleep', ['sleep', {token!r}])\ntime.sleep(120)\n")
    path = write(tmp_path, in_forward(code))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    process = subprocess.Popen([str(EXE), "check", str(path), "--only", "layernorm_forward",
                                "--timeout", "100"], env={**os.environ, "TMPDIR": str(temporary)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not processes_with(token) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(token), "the student's code never started"
        if which == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:  # Ctrl-C: the terminal signals the foreground process group
            os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == (143 if which == "SIGTERM" else 130)
    assert err == "interrupted\n" and out == ""
    assert none_left(token)
    assert list(temporary.iterdir()) == []

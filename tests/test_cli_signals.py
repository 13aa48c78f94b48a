"""Ctrl-C and SIGTERM end a long command with one line, "interrupted", and exit 130 or 143:
no traceback, and nothing it started left running. (`check` with a student's processes
running: tests/grading/test_check_box.py.)"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

EXE = pathlib.Path(sys.executable).with_name("tinygrad-bn")


def catches_sigterm(pid: int) -> bool:
    """Whether the process has its SIGTERM handler in place (so main() is running)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines()
                  if line.startswith("SigCgt:"))
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


COMMANDS = {
    "demo": ["demo", "--shape", "3000,800"],
    "experiment": ["experiment"],
    "bench": ["bench", "--smoke"],
}


@pytest.mark.parametrize("which", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_signal_ends_a_command_with_one_line(command, which, tmp_path):
    process = subprocess.Popen([str(EXE), *COMMANDS[command]], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not catches_sigterm(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if command == "bench":  # signalled while its timing workers run
            while len(children(process.pid)) < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        started = children(process.pid)
        time.sleep(0.3)
        if which == "SIGTERM":
            process.send_signal(signal.SIGTERM)
        else:  # Ctrl-C: the terminal signals the foreground process group
            os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == (143 if which == "SIGTERM" else 130), err
    assert err == "interrupted\n"
    deadline = time.monotonic() + 10
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in started if alive(p)]

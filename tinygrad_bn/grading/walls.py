"""The walls of the box a student's code runs in, raised with Linux system calls (no tool
needed): namespaces (`unshare`: PID, mount, network, IPC, UTS, and a user namespace when the
checker is not root), a fresh /proc, the filesystem read-only outside the box's folder, a
private /dev/shm, and every capability dropped with no way to regain one.

    held = enter_namespaces()          # in the warden, before it forks the box's first process
    held += build_walls(folder, held)  # in that first process (PID 1 of its namespace)
    drop_privileges()                  # in the student's process, before the student's code

Each function returns the names of the walls that hold (`WALLS` says what each means); a
wall the platform refuses is left out, and `probe_walls()` tells which hold here.
"""

from __future__ import annotations

import ctypes
import os
import pathlib

__all__ = ["WALLS", "enter_namespaces", "build_walls", "drop_privileges", "probe_walls",
           "process_walls"]

NAMESPACES = "Linux namespaces: root, or unprivileged user namespaces allowed"
# name -> (what holds when it stands, what it needs)
WALLS = {
    "process tree": ("every process the code starts is ended at the verdict, whatever group "
                     "or session it joins", "Linux (/proc)"),
    "clock": ("the timeout runs on the checker's clock; it never waits on the box", "-"),
    "memory": ("the memory budget covers the whole process tree (address space per process, "
               "private memory of the tree polled)", "Linux (/proc)"),
    "environment": ("a scrubbed environment; a fresh working folder, HOME and TMPDIR", "-"),
    "descriptors": ("none of the caller's open files, no controlling terminal", "-"),
    "pid namespace": ("the checker's processes are invisible and cannot be signalled; the "
                      "box's first process takes every other with it", NAMESPACES),
    "read-only filesystem": ("everything outside the box's folder is read-only; /run (the "
                             "system's sockets) hidden", NAMESPACES),
    "no network": ("no network but a loopback of its own", NAMESPACES),
    "no privileges": ("no capabilities, and none to be gained (no-new-privileges)",
                      "Linux (prctl, capset)"),
    "fresh interpreter": ("the code runs in a new interpreter, not in a copy of the "
                          "checker's process (which holds what the checker holds in memory)",
                          "a design this box does not have: it is a fork of the checker, so "
                          "that functions given in memory can be judged; run checks from a "
                          "process that holds no secrets (the CLI holds none but its "
                          "environment, which the box scrubs)"),
}

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME = 1024, 2048, 1 << 21
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 24, 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_FLAGS = {"ro": _MS_RDONLY, "nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC,
          "noatime": _MS_NOATIME, "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME}


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def enter_namespaces() -> list[str]:
    """In the warden: new PID, mount, network, IPC and UTS namespaces (inside a new user
    namespace when not root). The names of the walls this makes possible."""
    libc = _libc()
    if libc is None or not hasattr(libc, "unshare"):
        return []
    rest = _CLONE_NEWNS | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWPID
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:
        if libc.unshare(_CLONE_NEWUSER) != 0:
            return []
        try:
            pathlib.Path("/proc/self/setgroups").write_text("deny")
            pathlib.Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
            pathlib.Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        except OSError:
            return []
    if libc.unshare(rest | _CLONE_NEWNET) == 0:
        return ["pid namespace", "no network"]
    if libc.unshare(rest) == 0:
        return ["pid namespace"]
    return []


def build_walls(folder: pathlib.Path, entered: list[str]) -> list[str]:
    """In the box's first process (PID 1 of its namespace), before the student's process
    starts: a fresh /proc (without it the PID namespace is not claimed: the checker's
    processes would show there), the filesystem read-only but `folder`, a private /dev/shm.
    The names of the walls that hold."""
    libc = _libc()
    if libc is None or "pid namespace" not in entered:
        return []
    proc, read_only = _mount_walls(libc, folder)
    held = [w for w in entered if w != "pid namespace" or proc]
    return held + (["read-only filesystem"] if read_only else [])


def drop_privileges() -> bool:
    """In the student's process: the box's first process ending ends it; every capability
    dropped, and no way to gain one (no-new-privileges). Whether that holds."""
    libc = _libc()
    if libc is None:
        return False
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    return _drop_privileges(libc)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, kind: str | None, flags: int,
           data: str | None = None) -> bool:
    def encode(text: str | None) -> bytes | None:
        return None if text is None else text.encode()
    return libc.mount(encode(source), encode(target), encode(kind), ctypes.c_ulong(flags),
                      encode(data)) == 0


def _mount_walls(libc: ctypes.CDLL, folder: pathlib.Path) -> tuple[bool, bool]:
    """(a fresh /proc is mounted, everything but `folder` and it is read-only)."""
    if not _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE):
        return False, False
    if not _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC):
        return False, False
    box = str(folder)
    if not _mount(libc, box, box, None, _MS_BIND | _MS_REC):
        return True, False
    # The system's sockets (a service manager's, a container engine's) live under /run:
    # connecting to a socket needs no write access, so the folder is hidden, not made read-only
    if os.path.isdir("/run") and not box.startswith("/run/"):
        _mount(libc, "tmpfs", "/run", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY,
               "size=16k")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    if shm is not None and not _mount(libc, "tmpfs", shm, "tmpfs", _MS_NOSUID | _MS_NODEV,
                                      "size=64m"):
        shm = None
    writable = {box, "/proc"} | ({shm} if shm else set())
    try:
        mounts = pathlib.Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return True, False
    ok = True
    for line in mounts:
        fields = line.split()
        if len(fields) < 6:
            continue
        point = fields[4].replace("\\040", " ")
        if point in writable or point.startswith("/proc/"):
            continue
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        for option in fields[5].split(","):
            flags |= _FLAGS.get(option, 0)
        if not _mount(libc, None, point, None, flags) and \
                not _mount(libc, None, point, None, flags & ~(_MS_NOATIME | _MS_NODIRATIME
                                                             | _MS_RELATIME)):
            ok = ok and not os.path.exists(point)  # a mount over a folder now gone
    return True, ok


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_privileges(libc: ctypes.CDLL) -> bool:
    for capability in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 and ctypes.get_errno() == 22:
            break  # past the last capability this kernel knows
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    if not hasattr(libc, "capset") or libc.capset(ctypes.byref(header), data) != 0:
        return False
    try:  # no capability left in any set
        status = pathlib.Path("/proc/self/status").read_text()
    except OSError:
        return False
    sets = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
            if line.startswith(("CapEff", "CapPrm", "CapBnd"))}
    return len(sets) == 3 and not any(sets.values())


def process_walls(held: list[str]) -> list[str]:
    """All the walls that hold, given those the box raised (`held`): the checker's own
    machinery kills the process tree, keeps time and budgets memory (on Linux, where /proc
    lets it find the tree); the scrubbed environment and the closed descriptors are walls only
    where the checker's processes are out of the box's reach through /proc: a PID namespace
    with its own /proc, or a checker holding capabilities the box has dropped."""
    walls = ["clock"]
    if os.path.isdir("/proc/self/task"):
        walls[:0] = ["process tree", "memory"]
    if "pid namespace" in held or (os.geteuid() == 0 and "no privileges" in held):
        walls += ["environment", "descriptors"]
    return walls + [w for w in WALLS if w in held and w not in walls]


def probe_walls() -> list[str]:
    """The walls that hold on this machine (a box is raised and asked)."""
    from .sandbox import run_isolated
    outcome = run_isolated(lambda: True, timeout=30, memory=None)
    return outcome.walls if outcome.failure is None else process_walls([])

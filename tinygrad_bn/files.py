"""Output files written whole or not at all, to the paths their user named.

Every file the project writes (pictures, the stepper and report pages, plots, saved cases,
benchmark reports) goes through `write_atomic`:

- the bytes go to a new temporary file beside the target, with a random name, created
  exclusively and never through a symbolic link (`O_CREAT | O_EXCL | O_NOFOLLOW`), so
  nothing planted at a temporary name is followed or overwritten;
- they are flushed to disk (`fsync`) and the temporary file is renamed onto the target;
- any failure (a full disk, a file-size limit, no permission) removes the temporary file and
  leaves the target as it was (absent, or the previous version), never empty or cut short,
  and raises the OSError, whose `strerror` is one line (`describe_os_error`).

The target's kind is respected: a symbolic link is written through (the file it names is
replaced, the link stays), a missing file is created, an existing regular file is replaced
(keeping its permission bits; one the user may not write is refused, as a shell's `>`
refuses it); a folder, a named pipe, a device or a socket is refused, never replaced. The
target's folder must exist: it is never created here. `check_writable` and
`check_writable_folder` run the same checks with no data, so a long run refuses a path it
could not write before doing the work; `prepare_folder` makes the one folder a command was
told to fill.

A layer of its own, below everything that writes files (`check`, `train`, `viz`, the
command line, which are peers or above one another) and importing nothing of the project.
"""

from __future__ import annotations

import errno
import os
import pathlib
import secrets
import stat

__all__ = ["write_atomic", "check_writable", "check_writable_folder", "prepare_folder",
           "describe_os_error"]

_TEMPORARY_SUFFIX = ".tmp"
_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _error(code: int, reason: str, path: object) -> OSError:
    # OSError(errno, strerror, filename) picks the matching subclass (FileNotFoundError, ...).
    return OSError(code, reason, str(path))


def _name_limit(folder: pathlib.Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _resolved(given: pathlib.Path) -> pathlib.Path:
    """The file a write to `given` lands in: through symbolic links to the file they name
    (renaming onto a link would replace the link itself)."""
    if not given.name or given.name in (".", ".."):
        raise _error(errno.EISDIR, "a folder, not a file name", given)
    return pathlib.Path(os.path.realpath(given)) if os.path.islink(given) else given


def _check_target(given: pathlib.Path) -> tuple[pathlib.Path, os.stat_result | None]:
    """Raise OSError unless `given` names a file `write_atomic` may create or replace:
    (the file written, its status or None when it does not exist yet)."""
    target = _resolved(given)
    folder = target.parent
    encoded = len(os.fsencode(target.name))
    limit = _name_limit(folder) if folder.is_dir() else 255
    if encoded > limit:
        raise _error(errno.ENAMETOOLONG, f"file name too long ({encoded} bytes; at most {limit})",
                     given)
    try:
        status = os.stat(target)
    except FileNotFoundError:
        status = None
    if status is not None:
        kind = stat.S_IFMT(status.st_mode)
        if kind != stat.S_IFREG:
            what = _KINDS.get(kind, "not a regular file")
            code = errno.EISDIR if kind == stat.S_IFDIR else errno.EINVAL
            raise _error(code, f"{what}, not a regular file: never replaced", given)
        if not os.access(target, os.W_OK):
            raise _error(errno.EACCES, "Permission denied (the file is read-only)", given)
        return target, status
    if not folder.exists():
        raise _error(errno.ENOENT, f"no folder {_shown(folder)} (create it first)", given)
    if not folder.is_dir():
        raise _error(errno.ENOTDIR, f"Not a directory: {_shown(folder)}", given)
    return target, None


def _shown(folder: pathlib.Path) -> str:
    return str(folder) if str(folder) != "" else "."


def _temporary_beside(target: pathlib.Path) -> tuple[int, bytes]:
    """A new file in target's folder, opened for writing: (descriptor, its path as bytes).

    The name is random, the file created exclusively and never through a link; the
    target's name is cut (as bytes) so the temporary name fits the file system's limit."""
    folder = os.fsencode(target.parent) or b"."
    room = _name_limit(target.parent) - len(_TEMPORARY_SUFFIX) - 18
    stem = os.fsencode(target.name)[:max(room, 1)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        name = b"." + stem + b"." + secrets.token_hex(8).encode() + _TEMPORARY_SUFFIX.encode()
        temporary = os.path.join(folder, name)
        try:
            # 0o666 and the process's umask, as for any new file (mkstemp would make it 0o600).
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def _sync_folder(folder: pathlib.Path) -> None:
    # The rename itself on disk; a file system that cannot sync a folder is no failure.
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> pathlib.Path:
    """Write `data` (str is encoded as UTF-8) to `path` whole, or raise OSError and leave it
    unchanged. The folder must exist; a symbolic link is written through; a folder, pipe or
    device is refused. Returns the path (as given)."""
    given = pathlib.Path(path)
    target, status = _check_target(given)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    descriptor, temporary = _temporary_beside(target)
    try:
        try:
            if status is not None:  # the replaced file's permission bits, not the umask's
                os.fchmod(descriptor, stat.S_IMODE(status.st_mode))
            _write_all(descriptor, payload)
            os.fsync(descriptor)  # the data on disk before the name points at it
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_folder(target.parent)
    return given


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise OSError now if `path` could not be written by `write_atomic` (nothing is left
    behind)."""
    target, _ = _check_target(pathlib.Path(path))
    descriptor, temporary = _temporary_beside(target)
    os.close(descriptor)
    os.unlink(temporary)


def check_writable_folder(folder: str | os.PathLike[str]) -> None:
    """Raise OSError now if files could not be written into `folder` (which must exist)."""
    folder = pathlib.Path(folder)
    if not folder.exists():
        raise _error(errno.ENOENT, f"no folder {_shown(folder)} (create it first)", folder)
    if not folder.is_dir():
        raise _error(errno.ENOTDIR, "Not a directory", folder)
    check_writable(folder / "probe")


def prepare_folder(folder: str | os.PathLike[str]) -> bool:
    """Make `folder` ready to be filled: created if missing (that one folder only: its parent
    must exist), then checked as `check_writable_folder`. Returns True if it was created, so
    the caller can say so."""
    folder = pathlib.Path(folder)
    created = False
    if not folder.exists() and not folder.is_symlink():
        parent = folder.parent
        if parent.exists() and not parent.is_dir():
            raise _error(errno.ENOTDIR, f"Not a directory: {_shown(parent)}", folder)
        if not parent.exists():
            raise _error(errno.ENOENT, f"its folder {_shown(parent)} does not exist", folder)
        try:
            folder.mkdir()
            created = True
        except FileExistsError:  # made meanwhile by someone else: checked below
            pass
    check_writable_folder(folder)
    return created


def describe_os_error(error: OSError) -> str:
    """One line for an OSError: the system's reason ("No space left on device")."""
    return " ".join((error.strerror or str(error)).split())

"""Output files written whole or not at all.

Every file the project writes (pictures, the stepper page, plots, reports) goes through
`write_atomic`: the bytes go to a temporary file beside the target, are flushed to disk, and
the temporary file is renamed onto the target. A full disk or any other failure leaves the
target as it was (absent, or the previous version), never empty or cut short, and raises
the OSError. `check_writable` and `check_writable_folder` try the same steps with no data,
so a long run can refuse a path it could not write before doing the work.

It lives with the layer that trains and plots, the lowest that writes files; the drawing
layer and the command line above it use it too.
"""

from __future__ import annotations

import errno
import os
import pathlib
import secrets

__all__ = ["write_atomic", "check_writable", "check_writable_folder", "describe_os_error"]


def _resolved(path: str | os.PathLike[str]) -> pathlib.Path:
    # Through a symbolic link to the file it names: renaming onto the link would replace it.
    return pathlib.Path(os.path.realpath(path)) if os.path.islink(path) else pathlib.Path(path)


def _is_special(path: pathlib.Path) -> bool:
    # A device or a pipe (/dev/stdout, /dev/null): written in place, since a rename would
    # replace the device itself.
    return path.exists() and not path.is_file() and not path.is_dir()


def _make_folder(folder: pathlib.Path) -> None:
    # mkdir(parents=True) says "File exists" when an ancestor is a file: say what is wrong.
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(ancestor))
            break
    folder.mkdir(parents=True, exist_ok=True)


def _temporary_beside(path: pathlib.Path) -> tuple[int, pathlib.Path]:
    """A new file in path's folder, opened for writing: (descriptor, its path)."""
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666 and the process's umask, as for any new file (mkstemp would make it 0o600).
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> pathlib.Path:
    """Write `data` (str is encoded as UTF-8) to `path` whole, or raise OSError and leave it
    unchanged. Creates missing parent folders. Returns the path (as given)."""
    given = pathlib.Path(path)
    target = _resolved(given)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(given))
    if _is_special(target):
        with open(target, "wb") as stream:
            stream.write(payload)
        return given
    _make_folder(target.parent)
    descriptor, temporary = _temporary_beside(target)
    try:
        try:
            _write_all(descriptor, payload)
            os.fsync(descriptor)  # the data on disk before the name points at it
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return given


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise OSError now if `path` could not be written by `write_atomic` (its folder is
    created, as writing would; nothing else is left behind)."""
    target = _resolved(pathlib.Path(path))
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if _is_special(target):
        os.close(os.open(target, os.O_WRONLY))
        return
    check_writable_folder(target.parent)


def check_writable_folder(folder: str | os.PathLike[str]) -> None:
    """Raise OSError now if files could not be written into `folder` (created if missing)."""
    folder = pathlib.Path(folder)
    _make_folder(folder)
    descriptor, temporary = _temporary_beside(folder / "probe")
    os.close(descriptor)
    temporary.unlink()


def describe_os_error(error: OSError) -> str:
    """One line for an OSError: the system's reason ("No space left on device")."""
    return error.strerror or str(error)

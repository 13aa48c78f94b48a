"""numba's disk cache for the compiled passes: a private folder, or no disk cache at all.

`cached_njit(*signatures, **options)` stands where `numba.njit(..., cache=True)` would: the
function is compiled by numba as usual, and its compiled code is kept in a folder chosen
here, never one another local user can write:

- numba's NUMBA_CACHE_DIR, where the user set it, or else
- the package's own `fast/__pycache__` (as numba would choose), or else
- `$TMPDIR/tinygrad_bn-numba-<uid>`, created with mode 0700;

each accepted only if it is a directory (not a symbolic link) owned by the current user,
writable by neither group nor others, whose parent is writable by no one else either (or is
sticky, as /tmp is: no one else can rename an entry there). A cache file is a pickle that
numba loads and runs: a folder someone else could write into would let them run code as the
caller. Without such a folder the functions are compiled in memory in each process.

Any failure of the cache (a truncated or unreadable index or data file, a folder that became
unwritable) is a cache miss: the function is compiled instead, a bad index is removed, and
nothing reaches the caller. The cache is attached to each function itself: nothing here
changes numba's configuration, so a user's own `numba.njit(cache=True)` functions keep
numba's own folders.
"""

from __future__ import annotations

import functools
import inspect
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import numba
from numba.core import caching

__all__ = ["cached_njit", "cache_folder", "is_private_folder"]

_lock = threading.Lock()


def is_private_folder(path: str) -> bool:
    """Whether `path` is a directory, not a link, owned by this user (where the platform has
    owners), that neither group nor others can write, in a parent no one else can rename it
    in; and that this process can write."""
    try:
        info = os.lstat(path)
        parent = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):  # lstat: a symbolic link is not a directory
        return False
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return False
    others_write = stat.S_IWGRP | stat.S_IWOTH
    if info.st_mode & others_write:
        return False
    if parent.st_mode & others_write and not parent.st_mode & stat.S_ISVTX:
        return False
    return os.access(path, os.W_OK | os.X_OK)


_HERE = os.path.dirname(os.path.abspath(__file__))


def _in_tree() -> str:
    return os.path.join(_HERE, "__pycache__")


def _in_temp() -> str | None:
    if not hasattr(os, "getuid"):  # no owners to check: no shared folder is trusted
        return None
    return os.path.join(tempfile.gettempdir(), f"tinygrad_bn-numba-{os.getuid()}")


def _made_private(path: str, parents: bool = False) -> bool:
    try:
        if parents:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # accepted only if it passes the checks below
    except OSError:
        return False
    return is_private_folder(path)


def _own_subfolder(base: str) -> str | None:
    # A folder shared by installs (numba's NUMBA_CACHE_DIR, the temporary one) holds one
    # private subfolder per source folder, named as numba names it.
    folder = os.path.join(base, caching._CacheLocator.get_suitable_cache_subpath(__file__))
    return folder if _made_private(folder) else None


@functools.lru_cache(maxsize=1)
def cache_folder() -> str | None:
    """The folder compiled code is cached in, or None (compiled in memory): the first that is
    private of numba's NUMBA_CACHE_DIR (where the user set it), the package's `__pycache__`
    and the per-user temporary folder (each shared one through a subfolder of its own)."""
    user = numba.config.CACHE_DIR
    if user and _made_private(os.path.abspath(user), parents=True):
        return _own_subfolder(os.path.abspath(user))
    if _made_private(_in_tree()):
        return _in_tree()
    temp = _in_temp()
    if temp is not None and _made_private(temp):
        return _own_subfolder(temp)
    return None


_Locator: Any = getattr(caching, "InTreeCacheLocator", None) or caching._InTreeCacheLocator


class _PrivateLocator(_Locator):
    """numba's in-tree locator, pointed at the private folder, re-checked before each write."""

    def __init__(self, py_func: Callable[..., Any], py_file: str, folder: str) -> None:
        super().__init__(py_func, py_file)
        self._cache_path = folder

    def ensure_cache_path(self) -> None:
        if not is_private_folder(self._cache_path):
            raise OSError(f"{self._cache_path} is no longer a private folder")


class _PrivateImpl(caching.CompileResultCacheImpl):
    """numba's cache of compile results with the private locator (and none of numba's own:
    `CacheImpl.__init__`'s search, which NUMBA_CACHE_LOCATOR_CLASSES may redirect, is
    not run)."""

    def __init__(self, py_func: Callable[..., Any], folder: str) -> None:
        self._lineno = py_func.__code__.co_firstlineno
        source = inspect.getfile(py_func)
        self._locator = _PrivateLocator(py_func, source, folder)
        module = os.path.splitext(os.path.basename(source))[0]
        qualname = getattr(py_func, "__qualname__", py_func.__name__)
        self._filename_base = self.get_filename_base(f"{module}.{qualname}",
                                                     getattr(sys, "abiflags", ""))


class _PrivateCache(caching.FunctionCache):
    """A function's cache in the private folder, where every failure is a miss."""

    _impl_class = _PrivateImpl

    def __init__(self, py_func: Callable[..., Any], folder: str) -> None:
        self._name = repr(py_func)
        self._py_func = py_func
        self._impl = _PrivateImpl(py_func, folder)
        self._cache_path = folder
        self._cache_file = caching.IndexDataCacheFile(
            cache_path=folder, filename_base=self._impl.filename_base,
            source_stamp=self._impl.locator.get_source_stamp())
        self.enable()

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        try:
            return super().load_overload(sig, target_context)
        except Exception:  # noqa: BLE001 - a damaged entry of any kind: compile instead
            self._forget_index()
            return None

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            super().save_overload(sig, data)
        except Exception:  # noqa: BLE001 - the compiled function works without its copy on disk
            self._forget_index()

    def _forget_index(self) -> None:
        # A damaged index would fail every later load and save: removed, the next save
        # writes a fresh one.
        try:
            os.remove(self._cache_file._index_path)
        except (OSError, AttributeError):
            pass


def _attach_cache(dispatcher: Any, fn: Callable[..., Any]) -> None:
    folder = cache_folder()
    if folder is None:
        return
    try:
        dispatcher._cache = _PrivateCache(fn, folder)  # what numba's enable_caching sets
    except Exception:  # noqa: BLE001 - no disk cache for this function: compiled in memory
        pass


def cached_njit(*signatures: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba.njit(*signatures, **options) with the private disk cache (`cache_folder`):
    functions with signatures are compiled (or loaded) now, as numba.njit compiles them."""

    def decorate(fn: Callable[..., Any]) -> Any:
        dispatcher = numba.njit(**options)(fn)
        with _lock:
            _attach_cache(dispatcher, fn)
        for signature in signatures:
            dispatcher.compile(signature)
        if signatures:
            dispatcher.disable_compile()
        return dispatcher

    return decorate

"""Loading a student's `layers.py`: the folder above `cs231n/` on the path, modules the file
imports but the checker lacks stubbed (course modules handed in without the file, packages not
installed in the checker's Python: each with a note), the judged functions picked by name
("did you mean").
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
import re
import sys
import types
from collections.abc import Callable
from typing import Any

from .assignment import exception_text
from .table import ASSIGNMENT_NAMES as FUNCTIONS

__all__ = ["COURSE_MODULES", "student_loader", "from_namespace", "loaded_names",
           "resolve_source"]


# Course modules normalization never needs; a file importing them loads with a stub.
COURSE_MODULES = ("im2col", "im2col_cython", "fast_layers", "layer_utils", "rnn_layers",
                  "data_utils", "solver", "optim", "gradient_check", "classifiers", "vis_utils")


def _assignment_root(path: pathlib.Path) -> list[str]:
    """The folders to put on sys.path: the one above `cs231n/` (so `from cs231n.x import y`
    works whatever the entry point), and the file's own."""
    folders = [str(path.parent)]
    for parent in path.parents:
        if parent.name == "cs231n":
            folders.insert(0, str(parent.parent))
            break
    return folders


class _StubModule(types.ModuleType):
    """A course module normalization does not need: any name it is asked for is a function
    that says so when called."""

    __all__: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise ImportError(f"{self.__name__}.{name} is not available to the checker")
        return unavailable


def student_loader(path: pathlib.Path, mapping: dict[str, str]
                   ) -> Callable[[], tuple[dict[str, Callable], list[str], dict[str, str]]]:
    """A loader (run in the sandbox's child) of the student's file at `path`: it puts the
    folder above `cs231n/` on the path, stubs missing course modules, applies `mapping`
    (checked name -> the student's name) and returns (functions, notes, suggestions of names
    for functions not found)."""
    def load() -> tuple[dict[str, Callable], list[str], dict[str, str]]:
        for folder in reversed(_assignment_root(path)):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        notes: list[str] = []
        stubbed: list[str] = []
        for _ in range(20):  # one stub per missing course module
            spec = importlib.util.spec_from_file_location("student_layers", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["student_layers"] = module
            try:
                spec.loader.exec_module(module)
                break
            except ModuleNotFoundError as error:
                missing = error.name or ""
                if not missing or missing in sys.modules:
                    raise
                _install_stub(missing)
                stubbed.append(missing)
        # one note per module imported: `cs231n` stubbed on the way to `cs231n.im2col` is part
        notes.extend(_stub_note(name) for name in stubbed
                     if not any(other.startswith(name + ".") for other in stubbed))
        found, suggestions = _pick(vars(module), mapping)
        for name, own in mapping.items():
            if name not in found:
                notes.append(f"--function {name}={own}: the file defines no function {own}")
        return found, notes, suggestions
    return load


def _stub_note(missing: str) -> str:
    """Why a module the file imports was stubbed, in words."""
    top = missing.split(".")[0]
    if top == "cs231n" or missing.split(".")[-1] in COURSE_MODULES:
        return (f"{missing} not found (a course module; the file was given without it): "
                f"loaded with it stubbed (normalization does not need it)")
    return (f"{missing} is not installed in the checker's Python ({sys.executable}, "
            f"{sys.version.split()[0]}): loaded with it stubbed; a function that uses it "
            f"raises ImportError")


def resolve_source(path: pathlib.Path) -> pathlib.Path:
    """The layers.py a path given for checking means: the file itself, or layers.py in a
    folder (or in its cs231n/); a ValueError that says why for anything else."""
    if path.is_dir():
        for candidate in (path / "layers.py", path / "cs231n" / "layers.py"):
            if candidate.is_file():
                return candidate
        raise ValueError(f"path: the folder {str(path)!r} holds no layers.py (nor "
                         f"cs231n/layers.py); give the file itself")
    if path.suffix == ".ipynb":
        raise ValueError(f"path: notebooks (.ipynb) are not supported yet; give the .py file "
                         f"the notebook imports (usually cs231n/layers.py), got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"source: no such file {str(path)!r}")
    return path


def _install_stub(name: str) -> None:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix not in sys.modules:
            try:
                importlib.import_module(prefix)
                continue
            except ImportError:
                pass
            stub = _StubModule(prefix)
            stub.__path__ = []  # a package, so that submodules can be stubbed too
            sys.modules[prefix] = stub
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], stub)


def _pick(namespace: dict, mapping: dict[str, str]) -> tuple[dict[str, Callable], dict[str, str]]:
    """The assignment's functions in `namespace` (under their own or their mapped names), and
    for each one missing, the similar name the namespace has."""
    found: dict[str, Callable] = {}
    for name in FUNCTIONS:
        own = mapping.get(name, name)
        if callable(namespace.get(own)):
            found[name] = namespace[own]
    suggestions: dict[str, str] = {}
    candidates = {re.sub(r"[^a-z]", "", k.lower()): k for k, v in namespace.items()
                  if callable(v) and not k.startswith("_") and k not in FUNCTIONS}
    for name in FUNCTIONS:
        if name in found:
            continue
        key = re.sub(r"[^a-z]", "", name.lower())
        close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.85)
        if close:
            suggestions[name] = candidates[close[0]]
    return found, suggestions


def from_namespace(namespace: dict, mapping: dict[str, str]
                    ) -> Callable[[], tuple[dict[str, Callable], list[str], dict[str, str]]]:
    found, suggestions = _pick(namespace, mapping)
    return lambda: (found, [], suggestions)


def loaded_names(loader: Callable) -> dict[str, Any]:
    try:
        functions, notes, missing = loader()
    except SyntaxError as error:
        text = (error.text or "").strip()
        return {"syntax": f"SyntaxError: {error.msg} at line {error.lineno}"
                          + (f": {text}" if text else "")}
    except BaseException as error:  # noqa: BLE001 - the file's own code failed
        return {"error": exception_text(error)}
    module = sys.modules.get("student_layers")
    others = sorted(k for k, v in vars(module).items()
                    if callable(v) and getattr(v, "__module__", None) == "student_layers"
                    and not k.startswith("_") and k not in FUNCTIONS
                    and k not in missing.values()) if module is not None else []
    return {"defined": sorted(functions), "notes": notes, "missing": missing, "others": others}


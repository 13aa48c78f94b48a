"""Node labels: what a node is at a glance, escaped, and bounded in size."""

from __future__ import annotations

import re

import graphviz
import numpy as np

from tinygrad_bn.core.node import Node

from .index_text import index_text

MAX_NAME = 32  # characters of a name shown before it is cut with an ellipsis
_SURROGATE = re.compile("[\ud800-\udfff]")


def visible_surrogates(text: str, backslash: str = "\\") -> str:
    """`text` with each lone surrogate (a str from undecodable bytes, or made by hand; no
    encoding can write it) shown as its escape, the six characters \\udXXX (`backslash`
    is written for the backslash: "\\\\" inside JSON text)."""
    return _SURROGATE.sub(lambda match: f"{backslash}u{ord(match.group()):04x}", text)


def escape(text: str, limit: int | None = None) -> str:
    """Text made safe inside a quoted DOT label: backslashes and quotes escaped, one line.

    Every quote gets its backslash here, so the `graphviz` package (which escapes only
    quotes that have none) leaves the text alone. Control characters become spaces.
    """
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    text = "".join(ch if ch >= " " else " " for ch in visible_surrogates(text))
    return text.replace("\\", "\\\\").replace('"', '\\"')


def join_lines(lines: list[str]) -> str:
    """Escaped lines as one DOT label (centred line breaks), never read as an HTML label."""
    return graphviz.nohtml("\\n".join(lines))


def fmt(value: float) -> str:
    # Five significant digits: enough to tell 1 from 1.0001 at a glance.
    return f"{value:.5g}"


def summarize(array: np.ndarray) -> list[str]:
    """The number for a one-element array, the entries of a tiny one, else statistics."""
    if array.size == 1:
        return [fmt(float(array.reshape(-1)[0]))]
    if array.size <= 4:
        return ["[" + ", ".join(fmt(float(v)) for v in array.reshape(-1)) + "]"]
    # Statistics to four digits (what a glance takes in), one per line: nodes stay narrow.
    with np.errstate(all="ignore"):
        return [f"mean {short(float(np.mean(array)))}", f"std {short(float(np.std(array)))}",
                f"range [{short(float(np.min(array)))}, {short(float(np.max(array)))}]"]


def short(value: float) -> str:
    return f"{value:.4g}"


def shape_text(shape: tuple[int, ...]) -> str:
    return "scalar" if shape == () else "×".join(str(s) for s in shape)


def role(node: Node, is_root: bool) -> str:
    """'output', 'op', 'parameter' (a leaf that requires grad) or 'constant' ('input', a
    forward value a drawn backward pass reads, is decided by the caller)."""
    if is_root:
        return "output"
    if not node.is_leaf:
        return "op"
    return "parameter" if node.requires_grad else "constant"


def op_text(node: Node) -> str:
    """The op's name with what a reader needs of its parameters: pow's exponent, the axes of
    a sum or mean, a reshape's target shape."""
    params = node.params
    if node.op == "pow" and "p" in params:
        return f"pow ^{params['p']:g}"
    if node.op in ("sum", "mean") and "axis" in params:
        axes = params["axis"]
        return f"{node.op} axis={axes[0] if len(axes) == 1 else axes}"
    if node.op == "reshape" and "shape" in params:
        return f"reshape to {shape_text(tuple(params['shape']))}"
    if node.op in ("max", "min") and "axis" in params:
        axes = params["axis"]
        return f"{node.op} axis={axes[0] if len(axes) == 1 else axes}"
    if node.op == "index":
        return f"index {index_text(params['index'])}"
    if node.op == "pad":
        return f"pad {params['pad_width']}"
    if node.op == "sliding_window":
        sizes = "x".join(str(size) for size in params["window_shape"])
        return f"windows {sizes} axis={params['axis']}"
    if node.op == "concatenate":
        return f"concatenate axis={params['axis']}"
    return node.op or ""


def node_label(node: Node, role: str, show_data: bool, show_grad: bool,
               aliases: list[str] | None = None) -> str:
    """Title (name and op; drawn bold in SVG), shape and dtype, value and gradient summaries.

    The title's word matches the key's colour: "input" (blue: a leaf that requires grad),
    "constant" (grey), "forward ..." (yellow: a forward value a drawn backward pass reads).
    aliases: other names of the same value ("dvar_eps = dvar").
    """
    if role == "input":
        what = f"forward {op_text(node)}" if node.op else "forward value"
    elif role == "upstream":
        what = "upstream gradient"
    else:
        what = op_text(node) if node.op else ("input" if role == "parameter" else "constant")
    names = [node.name] if node.name else []
    names += [alias for alias in aliases or [] if alias not in names]
    title = (" = ".join(escape(name, MAX_NAME) for name in names) + f": {what}") if names else what
    lines = [title, f"{shape_text(node.shape)} {node.dtype}"]
    if show_data:
        first, *rest = summarize(node.data)
        lines += ["value " + first, *rest]
    if show_grad and node.requires_grad:
        if node.grad is None:
            lines.append("grad: not computed")
        else:
            first, *rest = summarize(node.grad)
            lines += ["grad " + first, *rest]
    return join_lines(lines)

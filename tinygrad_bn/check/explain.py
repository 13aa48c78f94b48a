"""A step-by-step trace of the staged batch-norm backward pass, for reading."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.node import Node, graph_nodes, vjp
from ..norm import STAGE_NAMES, NormSpec, norm_spec, staged_nodes
from .compare import available_memory, format_bytes
from .parts import backward_steps, branch_lines, broadcast_lines

__all__ = ["StageRow", "explain", "explain_staged", "explain_batchnorm", "explain_normalization",
           "format_explanation", "format_values", "load_case"]


@dataclass
class StageRow:
    """One stage of the backward pass: what arrives, the local derivative, what leaves."""

    stage: str
    op: str
    derivative: str
    shape: tuple[int, ...]
    grad_in_norm: float
    grad_out_norms: dict[str, float]


@dataclass
class Explanation:
    rows: list[StageRow]
    leaves: dict[str, float]
    mu_via_variance: float
    spec: NormSpec
    # Each stage's value and gradient, and the leaves' gradients, forward order (for --values).
    values: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    # The data it was computed on: x, gamma, beta, dout (printed first by --values).
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    # Gradients that are sums of branch parts, and parts summed over broadcast axes (parts.py).
    assembly: list[str] = field(default_factory=list)
    # The saved case it was loaded from (`check --save-case`), when it was: its function, the
    # student's outputs and the checker's correct values (branch parts, running statistics).
    case: dict[str, np.ndarray] = field(default_factory=dict)

    def __str__(self) -> str:
        return format_explanation(self)

    def _repr_markdown_(self) -> str:
        """The trace as a Markdown table (how Jupyter shows it)."""
        lines = ["| stage | op | shape | \\|grad in\\| | sends \\|grad\\| to | local derivative |",
                 "|---|---|---|---:|---|---|"]
        for row in self.rows:
            leaving = ", ".join(f"{name} {norm:.3e}" for name, norm in row.grad_out_norms.items())
            lines.append(f"| {row.stage} | {row.op} | {row.shape} | {row.grad_in_norm:.3e} | "
                         f"{leaving} | {row.derivative} |")
        text = format_explanation(self).splitlines()
        return "\n".join([text[0], "", *lines, "", *text[-2:]])


def _label(node: Node) -> str:
    if node.name is not None:
        return node.name
    return f"{node.data.item():g}" if node.data.size == 1 else f"const{node.shape}"


def explain_staged(nodes: dict[str, Node], leaves: dict[str, Node], spec: NormSpec,
                   dout: np.ndarray) -> Explanation:
    """Backpropagate `dout` through a staged graph and describe each stage, last stage first."""
    out = nodes["out"]
    walk = backward_steps(out, dout)  # before backward: the parts, from the same VJPs
    assembly = ["branches that add up:", *branch_lines(walk), "sums over broadcast axes:",
                *broadcast_lines(walk)]
    out.backward(dout)
    rows = []
    # The ten stages, and the reshape nodes group norm (and (C,) parameters of 4-D input)
    # add between them, in the order the backward pass visits them.
    named = [n for n in graph_nodes(out) if n.name is not None and n.op_def is not None
             and n.requires_grad]
    for node in reversed(named):
        stage = node.name
        op = node.op_def
        # Recompute this stage's VJP to see how its gradient splits among its parents.
        parent_grads = vjp(node, node.grad)
        leaving = {
            _label(parent): float(np.linalg.norm(grad))
            for parent, grad in zip(node.parents, parent_grads)
            if parent.requires_grad and grad is not None
        }
        parts = op.describe([_label(p) for p in node.parents], node.params,
                            [p.shape for p in node.parents])
        rows.append(StageRow(
            stage=stage, op=node.op,
            derivative=", ".join(part for part, parent in zip(parts, node.parents)
                                 if parent.requires_grad),
            shape=node.shape, grad_in_norm=float(np.linalg.norm(node.grad)),
            grad_out_norms=leaving,
        ))
    # d(mu) = -sum(dxmu); dxmu has a part through sq = xmu**2, i.e. 2*xmu*dsq, whose sum
    # over the batch vanishes on paper because sum(xmu) = 0.
    sq, xmu = nodes["sq"], nodes["xmu"]
    via_variance = -np.sum(vjp(sq, sq.grad)[0], axis=spec.reduce_axes)
    values = {stage: (nodes[stage].data, nodes[stage].grad) for stage in STAGE_NAMES}
    values.update({f"d{name}": (leaf.grad, None) for name, leaf in leaves.items()
                   if leaf.grad is not None})
    return Explanation(
        assembly=assembly,
        values=values,
        rows=rows,
        leaves={name: float(np.linalg.norm(leaf.grad)) for name, leaf in leaves.items()
                if leaf.grad is not None},
        mu_via_variance=float(np.max(np.abs(via_variance))) if xmu.size else 0.0,
        spec=spec,
    )


def explain_batchnorm(x: Any, gamma: Any, beta: Any, dout: Any, *, axis: Any = None,
                      eps: float = 1e-5) -> Explanation:
    """Trace batch norm's staged backward. x: (N, D) or (N, C, H, W); dout: x's shape."""
    return explain_normalization("batch", x, gamma, beta, dout, axis=axis, eps=eps)


def explain_normalization(kind: str, x: Any, gamma: Any, beta: Any, dout: Any, *,
                          eps: float = 1e-5, groups: int | None = None,
                          axis: Any = None) -> Explanation:
    """Trace the staged backward of normalization `kind` (batch, spatial, layer, group)."""
    x = Node(np.array(x), name="x")
    gamma, beta = Node(np.array(gamma), name="gamma"), Node(np.array(beta), name="beta")
    spec = norm_spec(kind, x.shape, eps=eps, groups=groups, axis=axis)
    dout = np.asarray(dout, dtype=x.dtype)
    explanation = explain_staged(staged_nodes(x, gamma, beta, spec),
                                 {"x": x, "gamma": gamma, "beta": beta}, spec, dout)
    explanation.inputs = {"x": x.data, "gamma": gamma.data, "beta": beta.data, "dout": dout}
    return explanation


# Peak bytes per value of x that explaining takes (the staged graph's stages and gradients),
# measured at x (2000, 1000) float64: 140; the command line's render takes about as much.
MEMORY_PER_VALUE = 256
_CASE_TEXT = ("kind", "function")  # the case's strings; every other entry holds numbers


def _array_headers(path: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each array's (shape, dtype) in the .npz archive at `path`, read from the headers alone
    (nothing is loaded). Raises ValueError for anything that is not such an archive."""
    headers = {}
    with open(path, "rb") as stream:  # OSError when missing or unreadable
        if not zipfile.is_zipfile(stream):
            raise ValueError(f"load: {path} is not a saved case (not an .npz archive)")
        stream.seek(0)
        archive = zipfile.ZipFile(stream)
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(member)
            headers[info.filename[:-len(".npy")]] = (tuple(shape), np.dtype(dtype))
    return headers


def load_case(path: Any) -> dict[str, Any]:
    """A case written by `tinygrad-bn check --save-case` (or `LayersReport.save_case`):
    kind, eps, groups, function, x, gamma, beta, dout and the student's and correct arrays.

    Each array's header is checked before anything is loaded (no pickles; numbers where
    numbers belong, text only in kind and function; sizes that fit in memory): ValueError
    says what is wrong."""
    try:
        headers = _array_headers(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        if str(error).startswith("load: "):
            raise
        raise ValueError(f"load: {path} is not a saved case ({error})") from None
    missing = [k for k in ("kind", "x", "gamma", "beta", "dout") if k not in headers]
    if missing:
        raise ValueError(f"load: {path} is not a saved case (it lacks {', '.join(missing)})")
    for name, (shape, dtype) in headers.items():
        if name in _CASE_TEXT:
            fits, expected = dtype.kind == "U" and shape == (), "one string"
        elif name in ("eps", "groups"):
            fits, expected = dtype.kind in "iuf" and shape == (), "one number"
        elif name in ("x", "gamma", "beta", "dout"):
            fits, expected = dtype in (np.float32, np.float64), "float32 or float64 numbers"
        else:  # the student's outputs as they were, the correct stages: any numbers
            fits, expected = dtype.kind in "biufc", "numbers"
        if not fits:
            raise ValueError(f"load: {path}: {name} holds {dtype} values of shape {shape}, "
                             f"expected {expected}")
    values = sum(int(np.prod(shape)) for name, (shape, _) in headers.items()
                 if name not in _CASE_TEXT)
    need, limit = values * MEMORY_PER_VALUE, available_memory() // 2
    if need > limit:
        raise ValueError(f"load: {path} holds {values:.3g} values; explaining them needs about "
                         f"{format_bytes(need)}, more than half the memory available now "
                         f"({format_bytes(limit)})")
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def explain(x: Any = None, gamma: Any = None, beta: Any = None, dout: Any = None, *,
            kind: str = "batch", eps: float = 1e-5, groups: int | None = None,
            load: Any = None) -> Explanation:
    """The staged backward of normalization `kind`, stage by stage, on x (N, D) or
    (N, C, H, W), gamma and beta (feature shape) and dout (x's shape); or on the case saved
    by `check --save-case` when `load` is its path. str() is the table; `format_values`
    prints x, gamma, beta, dout and then every stage's value and gradient."""
    if load is not None:
        case = load_case(load)
        kind = str(case["kind"])
        groups = int(case["groups"]) or None if "groups" in case else None
        eps = float(case["eps"]) if "eps" in case else eps
        x, gamma, beta, dout = (case[k] for k in ("x", "gamma", "beta", "dout"))
        if kind == "group":
            gamma, beta = np.ravel(gamma), np.ravel(beta)
        explanation = explain_normalization(kind, x, gamma, beta, dout, eps=eps, groups=groups)
        explanation.case = case
        return explanation
    if x is None or gamma is None or beta is None or dout is None:
        raise TypeError("explain: give x, gamma, beta and dout, or load=a saved case")
    return explain_normalization(kind, x, gamma, beta, dout, eps=eps, groups=groups)


# The correct values of a saved case printed by --values beyond the stages: the parts each
# gradient into xmu and into x is the sum of, and the running statistics after a train step.
_CASE_PARTS = (("dxmu1", "dxhat * ivar, the branch into xmu through xhat"),
               ("dxmu2", "2 * xmu * dsq, the branch into xmu through the variance"),
               ("dxmu", "dxmu1 + dxmu2, the branch into x through xmu"),
               ("dx2", "dmu / N, the branch into x through mu"),
               ("running_mean", "momentum * running_mean + (1 - momentum) * mu"),
               ("running_var", "momentum * running_var + (1 - momentum) * var"))


MAX_VALUES = 400  # entries per array printed by format_values; larger ones are summarized


def format_values(explanation: Explanation) -> str:
    """The inputs x, gamma, beta, dout, then each stage's value and gradient in forward
    order, then the leaves' gradients: the numbers a student compares with the
    intermediates of their own code."""
    blocks = []
    case = explanation.case
    if case:
        function = str(case["function"]) if "function" in case else "a function"
        blocks.append(f"the case of {function} ({explanation.spec.title}), as the checker "
                      f"judged it")
    with np.printoptions(precision=6, suppress=False, linewidth=100, threshold=MAX_VALUES):
        for name, value in explanation.inputs.items():
            blocks.append(f"{name} = {_array_text(value)}")
        for name, (value, grad) in explanation.values.items():
            blocks.append(f"{name} = {_array_text(value)}")
            if grad is not None:
                blocks.append(f"d{name} = {_array_text(grad)}")
        parts = [(name, words) for name, words in _CASE_PARTS if f"correct_{name}" in case]
        if parts:
            blocks.append("branch parts and running statistics (correct):")
        for name, words in parts:
            shown = "dx1" if name == "dxmu" else name
            blocks.append(f"{shown} = {words}: {_array_text(case[f'correct_{name}'])}")
        yours = [k for k in case if k.startswith("student_")]
        if yours:
            blocks.append("yours (what the function returned on this case):")
        for key in yours:
            blocks.append(f"{key[len('student_'):]} = {_array_text(case[key])}")
    return "\n".join(blocks)


def _array_text(array: np.ndarray) -> str:
    array = np.asarray(array)
    if array.size > MAX_VALUES:
        return (f"shape {array.shape}: mean {array.mean():.6g}, std {array.std():.6g}, "
                f"range [{array.min():.6g}, {array.max():.6g}] (too large to print)")
    text = np.array2string(array, separator=", ")
    return f"shape {array.shape}\n{text}" if array.ndim > 1 else text


def _statistic_axes(spec: NormSpec) -> str:
    """What each statistic averages over, in words and axes."""
    axes = spec.reduce_axes
    words = {"batch": "the batch", "spatial": "the batch and spatial axes",
             "layer": "each sample's features",
             "group": "each sample's group of channels"}.get(spec.kind, "the reduced axes")
    where = f"axis {axes[0]}" if len(axes) == 1 else f"axes {axes}"
    shape = f" of x viewed as {spec.grouped_shape}" if spec.grouped_shape else ""
    return f"{words} ({where}{shape})"


def format_explanation(explanation: Explanation) -> str:
    """The trace as a table: one row per stage in backward order."""
    spec = explanation.spec
    lines = [
        f"Backward pass of the staged {spec.title}, x {spec.x_shape}"
        + (f" viewed as {spec.grouped_shape}" if spec.grouped_shape else "")
        + f", reduced over axes {spec.reduce_axes}, N = {spec.count} values per statistic.",
        "Each row: the gradient arriving at the stage, the local derivative, and the norm "
        "of what it sends to each parent.",
        "",
    ]
    table = [("stage", "op", "shape", "|grad in|", "sends |grad| to", "local derivative")]
    for row in explanation.rows:
        leaving = ", ".join(f"{name} {norm:.3e}" for name, norm in row.grad_out_norms.items())
        table.append((row.stage, row.op, str(row.shape), f"{row.grad_in_norm:.3e}", leaving,
                      row.derivative))
    # Each column as wide as its widest entry, two spaces apart: nothing runs together.
    widths = [max(len(cells[i]) for cells in table) for i in range(5)]
    for cells in table:
        lines.append("  ".join(cell.rjust(width) if i == 3 else cell.ljust(width)
                               for i, (cell, width) in enumerate(zip(cells[:5], widths)))
                     + "  " + cells[5])
    lines.append("")
    lines.extend("  " + line if line.startswith("d") else line for line in explanation.assembly)
    lines.append("")
    lines.append("leaf gradients: " + ", ".join(f"|d{name}| = {norm:.3e}"
                                               for name, norm in explanation.leaves.items()))
    lines.append(
        f"note: the part of dmu that flows through the variance path (sq -> xmu -> mu) is "
        f"{explanation.mu_via_variance:.1e} here: zero on paper, since sum(xmu) = 0 over "
        f"{_statistic_axes(spec)}, and only rounding in practice."
    )
    return "\n".join(lines)

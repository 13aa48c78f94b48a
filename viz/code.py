"""The line of numpy a student would write for each part of the backward pass.

    dxmu1 = dxhat * ivar
    divar = np.sum(dxhat * xmu, axis=0, keepdims=True)

Each op's VJP written out with the graph's own names (a gradient is "d" + its node's name),
so that the stepper doubles as a worked solution. The numbers the stepper shows are the
engine's; these lines only say how to compute them by hand.
"""

from __future__ import annotations

from collections.abc import Callable

from tinygrad_bn.check.parts import BackwardStep, Part, summed_axes
from tinygrad_bn.core.node import Constant, Node

from .index_text import concat_slices, index_text, pad_slices, slices_text

__all__ = ["send_line", "sum_line"]


def _axis(axes: tuple[int, ...]) -> str:
    return str(axes[0]) if len(axes) == 1 else str(axes)


def _literal(node: Node) -> str | None:
    # A constant's value as a number in the code (a named one keeps its name: eps).
    if isinstance(node, Constant) and node.name is None and node.data.size == 1:
        return f"{float(node.data):g}"
    return None


def _wrap_sum(term: str, part: Part) -> str:
    leading, kept = part.summed
    if leading and kept:
        return f"np.sum({term}, axis={_axis(leading + kept)}).reshape({part.to.shape})"
    if leading:
        return f"np.sum({term}, axis={_axis(leading)})"
    if kept:
        return f"np.sum({term}, axis={_axis(kept)}, keepdims=True)"
    return term


def _term(part: Part, up: str, names: list[str], out: str) -> str:
    """The right-hand side of the part, before any broadcast sum."""
    node, i = part.via, part.index
    op, params = node.op, node.params
    a = names[0]
    b = names[1] if len(names) > 1 else ""
    if op in ("add", "identity", "broadcast_to"):
        return up
    if op == "sub":
        return up if i == 0 else f"-{up}"
    if op == "neg":
        return f"-{up}"
    if op == "mul":
        return f"{up} * {names[1 - i]}"
    if op == "div":
        if i == 0:
            return f"{up} / {b}"
        one = _literal(node.parents[0]) == "1" or node.parents[0].name == "1"
        return f"-{up} / {b}**2" if one else f"-{up} * {a} / {b}**2"
    if op == "pow" and "p" in params:
        p = params["p"]
        return f"2 * {a} * {up}" if p == 2 else f"{p:g} * {a}**{p - 1:g} * {up}"
    if op == "pow":
        return f"{up} * {b} * {a}**({b} - 1)" if i == 0 else f"{up} * {a}**{b} * np.log({a})"
    if op == "sqrt":
        return f"0.5 / {out} * {up}"
    if op == "exp":
        return f"{up} * {out}"
    if op == "log":
        return f"{up} / {a}"
    if op == "tanh":
        return f"{up} * (1 - {out}**2)"
    if op == "relu":
        return f"{up} * ({a} > 0)"
    if op in ("sum", "mean"):
        axes = params.get("axis", ())
        spread = up if params.get("keepdims") else f"np.expand_dims({up}, axis={_axis(axes)})"
        if op == "sum":
            return f"np.ones_like({a}) * {spread}"
        count = 1
        for axis in axes:
            count *= node.parents[0].shape[axis]
        return f"np.ones_like({a}) * {spread} / {count}"
    if op == "matmul":
        return f"{up} @ {b}.T" if i == 0 else f"{a}.T @ {up}"
    if op == "reshape":
        return f"{up}.reshape({a}.shape)"
    if op == "transpose":
        axes = params["axes"]
        back = tuple(sorted(range(len(axes)), key=lambda k: axes[k]))
        return f"{up}.transpose({back})"
    if op == "cast":
        return f"{up}.astype({a}.dtype)"
    moved = _moving_term(part, up, names, out)
    if moved is not None:
        return moved
    if "spec" in params:  # a fused normalization: its closed form
        spec = params["spec"]
        axes = _axis(spec.reduce_axes)
        sums = _axis(spec.param_sum_axes)
        if i == 0:
            return (f"ivar * (g - g.mean(axis={axes}, keepdims=True) - xhat * (g * xhat)"
                    f".mean(axis={axes}, keepdims=True))   # g = {up} * {b}; xhat, ivar "
                    f"from the forward")
        return f"np.sum({up} * xhat, axis={sums})" if i == 1 else f"np.sum({up}, axis={sums})"
    formula = node.op_def.describe(names, params, [p.shape for p in node.parents])[i]
    return f"{up} * ({formula.split('=', 1)[-1].strip()})"


def _moving_term(part: Part, up: str, names: list[str], out: str) -> str | None:
    """The lines of indexing, extremes, padding, joining and windows (None for other ops)."""
    node, i = part.via, part.index
    op, params = node.op, node.params
    a = names[0]
    if op == "index":
        index = params["index"]
        where = index_text(index)[1:-1] if len(index) == 1 else f"({index_text(index)[1:-1]})"
        return f"np.zeros_like({a}); np.add.at({part.name}, {where}, {up})"
    if op == "scatter_add":
        return f"{up}{index_text(params['index'])}"
    if op in ("max", "min"):
        axes = params["axis"]
        kept = out if params["keepdims"] else f"np.expand_dims({out}, axis={_axis(axes)})"
        spread = up if params["keepdims"] else f"np.expand_dims({up}, axis={_axis(axes)})"
        hit = f"({a} == {kept})"
        return f"{hit} * {spread} / {hit}.sum(axis={_axis(axes)}, keepdims=True)   # ties share"
    if op in ("maximum", "minimum"):
        this, other = names[i], names[1 - i]
        wins = ">" if op == "maximum" else "<"
        term = f"{up} * (({this} {wins} {other}) + 0.5 * ({this} == {other}))"
        if part.summed == ((), ()) and node.parents[i].shape != node.shape:
            # a broadcast input: summed back to its shape here when the parts do not say so
            return _wrap_sum(term, Part(part.to, node, i, part.value,
                                        summed=summed_axes(node.shape, node.parents[i].shape)))
        return term
    if op == "pad":
        return f"{up}{slices_text(pad_slices(params['pad_width'], node.parents[0].shape))}"
    if op == "concatenate":
        shapes = [parent.shape for parent in node.parents]
        return f"{up}{slices_text(concat_slices(params['axis'], shapes, i))}"
    if op == "sliding_window":
        return (f"np.zeros_like({a}); every window of {up} added back where it came from "
                f"(overlapping windows add)")
    if op == "window_sum":
        return (f"np.lib.stride_tricks.sliding_window_view({up}, {params['window_shape']}, "
                f"axis={params['axis']})")
    return None


def send_line(part: Part, upstream: str, label: Callable[[Node], str]) -> str:
    """`part.name = ...`: the part as one line of numpy, with the graph's names."""
    names = [_literal(p) or label(p) for p in part.via.parents]
    term = _term(part, upstream, names, label(part.via))
    return f"{part.name} = {_wrap_sum(term, part)}"


def sum_line(step: BackwardStep) -> str:
    """`dxmu = dxmu1 + dxmu2`: a gradient that is the sum of its parts ("" for one part)."""
    if not step.is_sum:
        return ""
    return f"{step.gradient} = " + " + ".join(part.name for part in step.parts)


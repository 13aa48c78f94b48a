"""relu_forward / relu_backward: out = max(x, 0), on inputs of any rank."""

from __future__ import annotations

from ...core.node import Node
from ...layers import relu_staged
from ..table import AssignmentFunction, Case, Seen, Slip
from .common import agrees, output
from .staged import rng_for, staged_grads, staged_out

SHAPES = [(3, 4, 5), (4, 7), (2, 3, 2, 3)]  # 3-D first: the notebook uses 2-D and 4-D only


def cases(facts: dict) -> list[Case]:
    result = []
    for index, shape in enumerate(SHAPES):
        rng = rng_for("relu", index)
        result.append(Case(f"x of shape {shape}", (rng.standard_normal(shape),),
                           rng.standard_normal(shape), {"shape": shape}))
    return result


def _mask_from_dout(seen: Seen) -> bool:
    dout = seen.case.dout
    return agrees(output(seen, 0), dout * (dout > 0))


def staged(case: Case):
    return relu_staged(Node(case.args[0], name="x"))["out"], case.dout


ENTRIES = (
    AssignmentFunction(
        "relu_forward", "forward", ("x",), ("out", "cache"), cases,
        lambda case: (staged_out(relu_staged, case.args),), about="max(x, 0), any shape"),
    AssignmentFunction(
        "relu_backward", "backward", ("dout", "cache"), ("dx",), cases,
        lambda case: staged_grads(relu_staged, case.args, case.dout), forward="relu_forward",
        staged=staged,
        slips=(Slip("relu-mask-from-dout",
                    "ReLU passes the gradient where its input x was positive; the sign of dout "
                    "says nothing about that.", _mask_from_dout),),
        about="dx = dout where x > 0"),
)

"""affine_forward / affine_backward: out = x.reshape(N, D) @ w + b, for x of any rank."""

from __future__ import annotations

import numpy as np

from ...core.node import Node
from ...layers import affine_staged
from ..table import AssignmentFunction, Case, Seen, Slip
from .common import agrees, output
from .staged import rng_for, staged_grads, staged_out

# N = 1, a 3-D and a 4-D input (the notebook uses 2-D and 4-D), 2-D
SHAPES = [(1, 6), (3, 2, 5), (2, 3, 2, 2), (4, 10)]
M = 3


def cases(facts: dict) -> list[Case]:
    result = []
    for index, shape in enumerate(SHAPES):
        rng = rng_for("affine", index)
        x = rng.standard_normal(shape)
        w = rng.standard_normal((int(np.prod(shape[1:])), M))
        b = rng.standard_normal(M)
        result.append(Case(f"x of shape {shape}", (x, w, b), rng.standard_normal((shape[0], M)),
                           {"shape": shape}))
    return result


def forward_reference(case: Case) -> tuple[np.ndarray, ...]:
    return (staged_out(affine_staged, case.args),)


def backward_reference(case: Case) -> tuple[np.ndarray, ...]:
    return staged_grads(affine_staged, case.args, case.dout)


def _dx_flat(seen: Seen) -> bool:
    dx, x = output(seen, 0), seen.case.args[0]
    return dx is not None and x.ndim > 2 and dx.shape == (x.shape[0], x[0].size) and \
        agrees(dx.reshape(x.shape), seen.expected[0])


def _db_summed_whole(seen: Seen) -> bool:
    db = output(seen, 2)
    return db is not None and db.size == 1 and agrees(db.reshape(()), np.sum(seen.case.dout))


def staged(case: Case):
    leaves = [Node(a, name=n) for a, n in zip(case.args, ("x", "w", "b"))]
    return affine_staged(*leaves)["out"], case.dout


ENTRIES = (
    AssignmentFunction(
        "affine_forward", "forward", ("x", "w", "b"), ("out", "cache"), cases, forward_reference,
        about="x (N, d_1, ..., d_k) flattened to (N, D), times w (D, M), plus b (M,)"),
    AssignmentFunction(
        "affine_backward", "backward", ("dout", "cache"), ("dx", "dw", "db"), cases,
        backward_reference, forward="affine_forward",
        staged=staged,
        slips=(
            Slip("affine-dx-not-reshaped",
                 "x may have any number of dimensions (N, d_1, ..., d_k); dx must have x's "
                 "shape, so the (N, D) product has to be reshaped back.", _dx_flat, output=0),
            Slip("sum-without-axis",
                 "np.sum with no axis adds every entry into one number; db needs one value per "
                 "output, the sum over axis 0.", _db_summed_whole, output=2),
        ),
        about="dx (x's shape), dw (D, M), db (M,) from the student's own cache"),
)
